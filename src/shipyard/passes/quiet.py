"""Keep third-party converters' console noise out of the user's terminal.

Exporters, quantizers and converters print progress, warnings and log lines of their own;
Shipyard's CLI shows its own steps instead. What they say is kept in the debug log
(``shipyard --debug``), so nothing is lost.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def quiet(
    log: logging.Logger,
    what: str,
    *,
    loggers: Sequence[str] = (),
    root: bool = False,
    stderr: bool = True,
) -> Iterator[None]:
    """Capture stdout (and ``stderr``), warnings and the ``loggers`` below ERROR.

    ``root=True`` also swaps the root logger's handlers for the capture: libraries that log
    through the root logger (ONNX Runtime's quantizer) would otherwise make ``logging``
    install a stderr handler for the rest of the process. On exit the output goes to
    ``log.debug`` under ``what``.
    """
    buffer = io.StringIO()
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    root_logger = logging.getLogger()
    handlers = root_logger.handlers
    if root:
        root_logger.handlers = [logging.StreamHandler(buffer)]
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            stack.enter_context(contextlib.redirect_stdout(buffer))
            if stderr:
                stack.enter_context(contextlib.redirect_stderr(buffer))
            warnings.simplefilter("ignore")
            yield
    finally:
        if root:
            root_logger.handlers = handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if buffer.getvalue():
            log.debug("%s output:\n%s", what, buffer.getvalue())
