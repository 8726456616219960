"""cxr-assist core library, in layers (each imports only those before it):

findings, errors (the shared vocabulary) <- data <- learn <- evaluation <- serving <- experiments;
reader_study uses data and evaluation only. Nothing here imports streamlit or argparse.
"""

from cxr_core.errors import DataFormatError, ImageReadError
from cxr_core.findings import FINDINGS, NO_FINDING

__version__ = "0.1.0"

__all__ = ["FINDINGS", "NO_FINDING", "ImageReadError", "DataFormatError", "__version__"]
