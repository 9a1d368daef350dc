"""Image files nnU-Net reads: headers without voxels, completeness checks, the cache of checked file versions.
"""
