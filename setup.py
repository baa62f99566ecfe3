"""Package mapping: qcompile/ is `qcompile`, passes/ is `qcompile.passes`, backends/ is `qcompile.backends`.

The top-level layout is fixed by the design card (DESIGN.md), so the two folders that are not under
qcompile/ are mapped into its namespace here; pyproject.toml holds everything else.
"""

from setuptools import find_packages, setup

_ROOTS = {"qcompile": "qcompile", "qcompile.passes": "passes", "qcompile.backends": "backends"}

packages, package_dir = [], {}
for name, folder in _ROOTS.items():
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

# Data files inside packages: the zoo's shipped probe heads (qcompile/zoo/heads/*.npz).
setup(packages=packages, package_dir=package_dir, package_data={"qcompile.zoo": ["heads/*.npz"]})
