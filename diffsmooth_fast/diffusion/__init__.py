"""Pretrained OpenAI diffusion models as denoisers: their flags (``openai_flags``), noise schedules
(``schedule``), the one-shot denoise of DiffSmooth (``denoiser``) and a multi-step reverse process (``reverse``)."""
