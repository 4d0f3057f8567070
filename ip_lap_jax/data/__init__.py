"""Training data: samplers over the official preprocessed layout, grain loaders, sharding.

`landmark_data.LandmarkSampler` and `renderer_data.RendererSampler` draw one training
example exactly as the release's `Dataset.__getitem__` does;
`pipeline.make_loader` turns a sampler into a deterministic, resumable grain DataLoader.
"""
