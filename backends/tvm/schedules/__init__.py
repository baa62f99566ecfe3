"""CPU schedule rules for the kernels Relax generates (the GEMM schedules itself in kernels/int_gemm.py)."""
