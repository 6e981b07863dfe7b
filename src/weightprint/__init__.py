"""weightprint: provenance of large-language-model weights.

Convert and quantize (``weightprint.convert``), watermark and trace leaked copies
(``weightprint.mark``), and test whether one model descends from another
(``weightprint.lineage``). Every command of the CLI is a library function here.
"""

from weightprint.errors import WeightprintError

__version__ = "0.1.0"
__all__ = ["WeightprintError", "__version__"]
