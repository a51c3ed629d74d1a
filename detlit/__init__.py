"""detlit: train Detectron2's Faster R-CNN on your own COCO data with PyTorch Lightning."""

__version__ = "0.1.0"
