"""Model code compatible with the checkpoints users already have (OpenAI diffusion UNets, Cohen/SmoothAdv
classifiers), and the safe loading of their files."""
