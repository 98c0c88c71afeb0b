"""Model builders for the course's families: short compositions of fundl layers.

Every builder returns an ordinary :class:`fundl.Layer`, trained by the same
:func:`fundl.train.fit` as any other model.
"""

from fundl.models._classification import classification_loss as classification_loss, split_batch as split_batch
from fundl.models._cnn import lenet as lenet
from fundl.models._gan import (
    GAN as GAN,
    gan as gan,
    gan_loss as gan_loss,
    gan_optimizer as gan_optimizer,
    gan_samples as gan_samples,
    mlp_gan as mlp_gan,
    sample_quality as sample_quality,
)
from fundl.models._gpt import GPT as GPT, gpt as gpt, gpt_generate as gpt_generate, next_token as next_token
from fundl.models._mlp import mlp as mlp
from fundl.models._recsys import (
    RATING_LOSSES as RATING_LOSSES,
    deep_recommender as deep_recommender,
    dot_recommender as dot_recommender,
    mean_user_auc as mean_user_auc,
    per_user_auc as per_user_auc,
    rating_loss as rating_loss,
    score_matrix as score_matrix,
    triplet_loss as triplet_loss,
    triplet_margin as triplet_margin,
)
from fundl.models._rnn import (
    CharLM as CharLM,
    char_lm as char_lm,
    generate as generate,
    rnn_classifier as rnn_classifier,
)
from fundl.models._seq2seq import (
    Seq2Seq as Seq2Seq,
    beam_decode as beam_decode,
    greedy_decode as greedy_decode,
    seq2seq as seq2seq,
)
from fundl.models._vae import (
    LIKELIHOODS as LIKELIHOODS,
    VAE as VAE,
    conv_vae as conv_vae,
    decode as decode,
    encode as encode,
    kl_standard_normal as kl_standard_normal,
    mlp_vae as mlp_vae,
    neg_elbo_loss as neg_elbo_loss,
    reconstruction_nll as reconstruction_nll,
    reparameterize as reparameterize,
    sample_prior as sample_prior,
    vae as vae,
)
