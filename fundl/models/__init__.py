"""Model builders for the course's families: short compositions of fundl layers.

Every builder returns an ordinary :class:`fundl.Layer`, trained by the same
:func:`fundl.train.fit` as any other model.
"""

from fundl.models._cnn import lenet as lenet
from fundl.models._gan import GAN as GAN
from fundl.models._gan import gan as gan
from fundl.models._gan import gan_loss as gan_loss
from fundl.models._gan import gan_optimizer as gan_optimizer
from fundl.models._gan import gan_samples as gan_samples
from fundl.models._gan import mlp_gan as mlp_gan
from fundl.models._gan import sample_quality as sample_quality
from fundl.models._gpt import GPT as GPT
from fundl.models._gpt import gpt as gpt
from fundl.models._gpt import gpt_generate as gpt_generate
from fundl.models._gpt import next_token as next_token
from fundl.models._mlp import mlp as mlp
from fundl.models._recsys import RATING_LOSSES as RATING_LOSSES
from fundl.models._recsys import deep_recommender as deep_recommender
from fundl.models._recsys import dot_recommender as dot_recommender
from fundl.models._recsys import mean_user_auc as mean_user_auc
from fundl.models._recsys import per_user_auc as per_user_auc
from fundl.models._recsys import rating_loss as rating_loss
from fundl.models._recsys import score_matrix as score_matrix
from fundl.models._recsys import triplet_loss as triplet_loss
from fundl.models._recsys import triplet_margin as triplet_margin
from fundl.models._rnn import CharLM as CharLM
from fundl.models._rnn import char_lm as char_lm
from fundl.models._rnn import generate as generate
from fundl.models._rnn import rnn_classifier as rnn_classifier
from fundl.models._seq2seq import Seq2Seq as Seq2Seq
from fundl.models._seq2seq import beam_decode as beam_decode
from fundl.models._seq2seq import greedy_decode as greedy_decode
from fundl.models._seq2seq import seq2seq as seq2seq
from fundl.models._vae import (
    LIKELIHOODS as LIKELIHOODS,
)
from fundl.models._vae import (
    VAE as VAE,
)
from fundl.models._vae import (
    conv_vae as conv_vae,
)
from fundl.models._vae import (
    decode as decode,
)
from fundl.models._vae import (
    encode as encode,
)
from fundl.models._vae import (
    kl_standard_normal as kl_standard_normal,
)
from fundl.models._vae import (
    mlp_vae as mlp_vae,
)
from fundl.models._vae import (
    neg_elbo_loss as neg_elbo_loss,
)
from fundl.models._vae import (
    reconstruction_nll as reconstruction_nll,
)
from fundl.models._vae import (
    reparameterize as reparameterize,
)
from fundl.models._vae import (
    sample_prior as sample_prior,
)
from fundl.models._vae import (
    vae as vae,
)
