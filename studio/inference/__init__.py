"""Generation: the pipelines, the pipeline cache, recipes and what they speed up, devices and dtypes,
the safety checker, the image history."""
