"""The app's host, without Streamlit: which model it serves and keeping that model ready.

* :mod:`cxr_core.host.settings`: what the environment configures (the bundle folder, the runtime and compute
  modes, the warm-up switch, the folders the app may read), and :class:`~cxr_core.host.settings.ModelKey`, the key
  of the loaded model;
* :mod:`cxr_core.host.model_host`: :class:`~cxr_core.host.model_host.ModelHost` (one per process,
  :data:`~cxr_core.host.model_host.HOST`): loading through the one runtime choice (``Predictor.from_bundle``), the
  background warm-up and its state, the one thread every model call runs on, the serving-form build for the next
  start.

The Streamlit app (app.py, streamlit_app.py, pages/) shows what the host does; a page never loads the model itself.
Imports: the host's own modules at the top; :mod:`cxr_core.bundle` and :mod:`cxr_core.serving` inside the functions
that load (nothing heavy is imported with the host: no TensorFlow, no LiteRT).
"""

from cxr_core.host.model_host import HOST, WARM_STEPS, ModelHost, WarmState, keep_keras_session, start_serving_build
from cxr_core.host.settings import ModelKey, current_bundle

__all__ = ["HOST", "WARM_STEPS", "ModelHost", "ModelKey", "WarmState", "current_bundle", "keep_keras_session",
           "start_serving_build"]
