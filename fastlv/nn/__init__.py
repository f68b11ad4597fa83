from fastlv.nn.gmm import DiagGaussianMixture, GaussianMixture, GMMHead
