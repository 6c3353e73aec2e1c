"""Networks: timm backbones with offline weights, and the CAM classification network."""
