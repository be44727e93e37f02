"""Task code shared by the families of a task: training and validation steps, evaluate, report,
predict, signature, serving example and usage, each derived from the bound model config.

A family is its config, its ``build`` and its task: it re-exports its task's functions (the
family contract, ``components/models/contract.py``, is met by the module's names) and keeps only
what is its own. ``image_classification`` is a whole task (ResNet, its ViT variant, any new image
classifier); ``image_generation`` is the request format, serving and sample grids of the
label-conditional image generators (GAN, diffusion), whose training and scoring differ.
"""
