"""Phantom simulators: procedurally drawn chest radiographs and head CT/MRI/PET."""
