"""The Manifold Tangent Classifier study (Rifai et al., NIPS 2011): a greedy stack of contractive autoencoders, fine-tuned."""
