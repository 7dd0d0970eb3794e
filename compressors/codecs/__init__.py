"""Lossless codecs for quantized gradients: Huffman coding and the GenNorm source model."""
