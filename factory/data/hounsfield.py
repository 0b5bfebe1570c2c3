"""How CT Hounsfield units are stored in unsigned 16-bit pixels, wherever the factory reads or writes
them: PNG slices (phantoms, the volume adapter, a translation's ct.png) and DICOM (RescaleIntercept
-CT_PNG_OFFSET). Air (-1000 HU) and everything denser then fit without a sign."""

CT_PNG_OFFSET = 1024  # uint16 pixel = HU + CT_PNG_OFFSET
