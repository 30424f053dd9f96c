"""condense: dataset distillation behind one API and CLI.

>>> import condense
>>> s = condense.load("synth.h5")          # a torch Dataset of (image, label)
>>> s.meta.algorithm, s.meta.ipc, len(s)
"""
from condense.errors import CondenseError
from condense.synthetic import SyntheticSet, load

__all__ = ["CondenseError", "SyntheticSet", "load"]
