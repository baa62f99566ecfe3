"""Numerical building blocks (Hadamard and orthogonal rotations) used by the compiler passes."""
