"""The embedded demo: the scripts that trained the shipped models on the digits (``train``) and compared the
paper's methods with them (``compare``); the models themselves are in ``files/`` (see
:mod:`diffsmooth_fast.models.shipped`)."""
