"""What the tests share beyond fixtures: here, readers of the bytes the engine writes (the order
of the elements as encoded, which a decoded pydicom Dataset hides)."""
