"""What every training or inference stage needs: device and process group, checkpoints, the loop."""
