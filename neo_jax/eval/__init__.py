"""Benchmarks as the NEO authors run them: VLMEvalKit files and prompts (``vlmevalkit``,
``prompts``, ``matching``), the release's evaluation preprocessing and generation
settings (``presets``) and an lmms-eval model (``lmms_adapter``)."""
