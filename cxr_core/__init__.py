"""cxr-assist core library: data, preprocessing, models, metrics, explanations.

Building blocks only: nothing here imports streamlit or argparse.
"""

from cxr_core.errors import DataFormatError, ImageReadError
from cxr_core.findings import FINDINGS, NO_FINDING

__version__ = "0.1.0"

__all__ = ["FINDINGS", "NO_FINDING", "ImageReadError", "DataFormatError", "__version__"]
