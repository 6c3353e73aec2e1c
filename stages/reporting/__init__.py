"""What summary.md shows beyond the one table: per-class IoU side by side and the methods' own
reports, each read from the files the stages already wrote."""
