"""Label Studio's formats: brush RLE, the labeling config, and the ids of tasks, projects and annotations."""
