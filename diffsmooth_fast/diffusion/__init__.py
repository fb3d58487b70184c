"""Pretrained diffusion models as denoisers: OpenAI's flags (``openai_flags``), read from a file's shapes
(``layout``, ``infer_flags``, ``openai_files``), noise schedules (``schedule``), how a network's output gives x0
(``parametrization``), diffusers models (``from_diffusers``), the one-shot denoise of DiffSmooth (``denoiser``)
and a multi-step reverse process (``reverse``)."""
