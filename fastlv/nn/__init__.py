from fastlv.nn.gmm import DiagGaussianMixture, GaussianMixture, GMMHead
from fastlv.nn.latent import DiagGaussianLatent, gaussian_head
