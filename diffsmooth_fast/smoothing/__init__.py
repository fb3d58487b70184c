"""Randomized smoothing of any base classifier: Cohen's CERTIFY and PREDICT (``certify``), their statistics
(``stats``) and the noise-address scheme that fixes every sample's noise by position (``noise_address``)."""
