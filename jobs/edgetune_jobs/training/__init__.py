"""Training with mmdet/mmengine: config adaptation and the progress hook."""
