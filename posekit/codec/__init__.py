"""The codec: ``encode`` (annotations -> heatmap/PAF targets) and ``decode`` (maps -> people) are two halves of
one convention: the same skeleton, the same stride and the same coordinates.

Coordinates: keypoints are in *pixel-index* coordinates (pixel k's centre is at k). Output cell i covers input
pixels [s*i, s*i + s - 1], so its centre is at ``s*i + (s - 1)/2`` (3.5 for stride 8), for heatmaps and PAFs
alike (TAO puts PAFs on the top-left corners: quirk 2, fixed).
"""

from posekit.codec.decode import Decoder, People, decode
from posekit.codec.encode import Encoder, cell_centers, encode, encode_batch

__all__ = ["Decoder", "Encoder", "People", "cell_centers", "decode", "encode", "encode_batch"]
