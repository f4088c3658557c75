"""llama-cpp-python's OpenAI-compatible server with llama.cpp's extra CPU buffer types off.

``python -m streamsynth.cli.llama_server --model GGUF ...`` takes the same arguments as
``python -m llama_cpp.server``. The one difference: weights stay in plain CPU buffers.
With the default (repacked / AMX buffers), a source build of llama-cpp-python 0.3.36
on a 2-core Xeon VM with AMX crashed (SIGSEGV in ``llama_decode``) on every prompt of
more than one token; with plain buffers it is stable, and a 135M model loses nothing
noticeable. The demo uses this module so that ``pip install`` plus ``streamsynth demo``
works on such machines too.
"""

from __future__ import annotations

from typing import Any


def _patch_model_params() -> None:
    import importlib

    # The low-level bindings module, as llama_cpp.llama (which builds the params) sees it.
    lib: Any = importlib.import_module("llama_cpp.llama_cpp")
    original = lib.llama_model_default_params

    def params_without_extra_buffers() -> Any:
        params = original()
        if hasattr(params, "use_extra_bufts"):  # absent in older llama.cpp releases
            params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = params_without_extra_buffers


def main() -> None:
    _patch_model_params()
    import importlib

    server: Any = importlib.import_module("llama_cpp.server.__main__")
    server.main()


if __name__ == "__main__":
    main()
