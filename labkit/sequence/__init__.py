"""Sequence generation for speech and text (chapter 17).

Synthetic voices, speech features and tokens, separation, masked parallel decoding,
predictive-then-generative enhancement and text diffusion; each module names its paper and
section.

- :mod:`labkit.sequence.separation`: time-domain speech separation (mossformer2), "MossFormer2:
  Combining Transformer and RNN-Free Recurrent Network for Enhanced Time-Domain Monaural Speech
  Separation" (section 01, "Speech separation with a recurrent memory: MossFormer2"): conv
  encoder, gated attention with or without the gated FSMN memory, masks and decoder, PIT
  training, and mixtures of a low and a high synthetic voice.
- :mod:`labkit.sequence.tokens`: speech tokens (vec_tok_speech), "Vec-Tok Speech: speech
  vectorization and tokenization for neural speech generation" (section 02, "Speech tokens and
  BPE: Vec-Tok Speech"): per-utterance normalised log-mel vectors, KMeans tokens, run-length
  dedup, byte-pair merges over the token stream, and a token GPT scored in bits per second.
- :mod:`labkit.sequence.masked_decoding`: parallel masked decoding (mobilespeech), "MobileSpeech:
  A Fast and High-Fidelity Framework for Mobile Zero-Shot Text-to-Speech" (section 03, "Parallel
  masked decoding: MobileSpeech"): a 2-level residual-VQ codec (KMeans) on log-mel frames, the
  tiny GPT as a bidirectional masked decoder conditioned on phones and a voice prompt, trained on
  random mask ratios and decoded in N cosine-scheduled rounds per level, and the causal baseline.
- :mod:`labkit.sequence.regeneration`: predictive-then-generative enhancement (storm), "StoRM:
  A Diffusion-based Stochastic Regeneration Model for Speech Enhancement and Dereverberation"
  (section 04, "Predict, then regenerate: StoRM"): the amplitude-compressed complex STFT, noisy
  reverberant utterances, a one-pass predictor, denoisers for pure diffusion and for StoRM, and
  the sampler that starts from the noised estimate.
- :mod:`labkit.sequence.text_diffusion`: encoder-decoder text diffusion (diffusia), "DiffuSIA: A
  Spiral Interaction Architecture for Encoder-Decoder Text Diffusion" (section 05, "Spiral
  encoder-decoder text diffusion: DiffuSIA"): the 60-word paraphrase grammar, diffusion on word
  embeddings with rounding, and the encoder-decoder with and without the spiral interaction.
"""

__all__: list[str] = []

from labkit.sequence.text_diffusion import (  # noqa: E402
    SpiralEncDec, TextDiffusionConfig, make_paraphrases, sample, train_text_diffusion)

__all__ += ["SpiralEncDec", "TextDiffusionConfig", "make_paraphrases", "sample", "train_text_diffusion"]

from labkit.sequence.separation import (  # noqa: E402
    Separator, SeparatorConfig, low_high_mixtures, matched_baseline, train_separator)

__all__ += ["Separator", "SeparatorConfig", "low_high_mixtures", "matched_baseline",
            "train_separator"]

from labkit.sequence.tokens import (  # noqa: E402
    BPE, KMeansTokens, dedup, fit_kmeans, lm_bits, speech_corpus, speech_vectors, train_bpe,
    train_token_lm)

__all__ += ["BPE", "KMeansTokens", "dedup", "fit_kmeans", "lm_bits", "speech_corpus",
            "speech_vectors", "train_bpe", "train_token_lm"]

from labkit.sequence.regeneration import (  # noqa: E402
    compress_stft, decompress_istft, make_enhancement_data, regenerate, train_predictor,
    train_score)

__all__ += ["compress_stft", "decompress_istft", "make_enhancement_data", "regenerate",
            "train_predictor", "train_score"]

from labkit.sequence.masked_decoding import (  # noqa: E402
    CodeDecoder, ResidualVQ, ar_decode, fit_residual_vq, make_tts_data, masked_decode,
    train_decoder)

__all__ += ["CodeDecoder", "ResidualVQ", "ar_decode", "fit_residual_vq", "make_tts_data",
            "masked_decode", "train_decoder"]
