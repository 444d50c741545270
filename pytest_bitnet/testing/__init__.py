"""Test tooling users import: models, vocabularies, malformed files, crossval.

``models``     deterministic tiny GGUF models (make_tiny_model, cached_tiny_model, broken_variants)
``vocab``      the SPM vocabulary those models carry
``malformed``  variants of a valid GGUF file that each break one rule; ``Gguf``, an editor for hostile values in a valid layout
``crossval``   the reference engine against llama.cpp, prompt by prompt

Uses the bridge API (crossval); imports neither fault_inject nor pytest.
"""
