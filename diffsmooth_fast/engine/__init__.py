"""The base classifiers of every method and how fast they run: the method's mathematics (``method``), the speed
options and where they are applied (``options``), the fused counting path (``counting``), CUDA graphs
(``graphs``) and batch sizing (``batching``)."""
