"""kexue_lib: the code behind the kexue-derivations book.

One module per concept, each naming the article(s) it serves:

* :mod:`kexue_lib.verify`: the contract of a check (symbolic, numeric, Monte Carlo, summary).
* :mod:`kexue_lib.runtime`: the FULL switch, device, seeds and progress bars for notebooks.
* :mod:`kexue_lib.probability`: geometric probability (points of a disk in one sector).
"""
from . import runtime, verify

__version__ = "0.1.0"
__all__ = ["verify", "runtime", "__version__"]
