"""kexue_lib: the code behind the kexue-derivations book.

One module per concept, each naming the article(s) it serves:

* :mod:`kexue_lib.verify`: the contract of a check (symbolic, numeric, Monte Carlo, summary).
* :mod:`kexue_lib.runtime`: the FULL switch, device, seeds and progress bars for notebooks.

Part I, probability and generative models

* :mod:`kexue_lib.probability`: n points of a disk in one sector (9324); re-exports the
  argmax(mu + eps) distributions of :mod:`kexue_lib.discrete` (9085).
* :mod:`kexue_lib.discrete`: discrete distributions from noisy argmax, by quadrature and Monte Carlo (9085).
* :mod:`kexue_lib.diffusion`, :mod:`kexue_lib.denoisers`: DDPM schedule, loss, sampler; MLP and UNet (9119).
* :mod:`kexue_lib.heat`: the linear feature-field predictor behind QB-Heat (9359).
* :mod:`kexue_lib.self_consuming`: the self-consuming Gaussian loop and its exact recursions (9687).

Part II, softmax and attention

* :mod:`kexue_lib.attention`: softmax (SDPA, named scales), relu², linear and Performer attention (9034, 9019, 8338).
* :mod:`kexue_lib.gau`: the gated attention unit, its output scale at initialization and a Post-LN GAU LM (9019, 8990; FLASH).
* :mod:`kexue_lib.jl`: Johnson-Lindenstrauss projections and distortion (9588).
* :mod:`kexue_lib.cost`: FLOP model and wall-clock of a BERT-style layer (8610).
* :mod:`kexue_lib.unargmaxable`: classes that can never win the argmax (9046).
* :mod:`kexue_lib.toy_lm`: a tiny Transformer on a synthetic Markov language: softmax, linear and local linear
  attention; causal, bidirectional and mixed-direction heads; LM and MLM objectives (8338, 9529).
* :mod:`kexue_lib.losses`: training objectives: the symmetric InfoNCE loss (9593); ZLPR for hard and soft labels
  with masking, sigma(2s) probabilities and ECE (9064); re-exports CoSENT and EMO (Part VI).

Part III, efficient and deep Transformers

* :mod:`kexue_lib.flash`: FLASH's mixed chunk attention (relu² inside chunks, chunked linear attention across
  them), its normalisers, padding masks and the local/global ablation (8934).
* :mod:`kexue_lib.deepnet`: DeepNorm LN(alpha x + F(x)), the paper's alpha/beta and the article's per-optimizer
  table, beta-scaled Xavier init, the magnitude probe, a Post-LN/Pre-LN/DeepNorm block and stack, plain vs
  scaled-residual MLPs (8978, 8994).
* :mod:`kexue_lib.heads`: tied and untied LM output heads (half swap, channel shuffle, orthogonal projection),
  their predicted initial loss and its Monte Carlo (9698).
* :mod:`kexue_lib.amp`: mixed-precision training: an autocast train step, a static/dynamic loss scaler that skips
  steps on inf/NaN, ``torch.compile`` with an eager fallback (9059).

Part IV, position and length extrapolation

* :mod:`kexue_lib.rope`: rotary positions (interleaved or split halves, float64 tables, float32 arithmetic
  for low-precision inputs), ReRoPE and Leaky ReRoPE scores, sliding-window masks and HWFA's receptive field,
  key normalization, the log n scale, RMSNorm with or without gain, and a small Transformer with all of these as
  per-layer options (9105, 9577, 8998, 9731, 9859).
* :mod:`kexue_lib.extrapolation`: train short, test long: a plain and a copy (induction) language, paired
  training and held-out loss per length (9577, 9731, 9859).

Part V, optimizers

* :mod:`kexue_lib.optim`: Lion, Tiger, LAMB and the sign-power family (9473, 9512, 9736).

Part VI, losses and objectives

* :mod:`kexue_lib.global_pointer`: GlobalPointer and Efficient GlobalPointer span heads (RoPE q.k per type,
  upper-triangular span mask), span decoding, micro span F1, TPLinker's additive scorer (8373, 8877).
* :mod:`kexue_lib.crf`: the linear-chain CRF baseline of the GlobalPointer chapter (BIO tags, log-partition,
  Viterbi, a CRF tagger) and its sequential-depth probes (8373).
* :mod:`kexue_lib.cosent`: the CoSENT ranking loss on cosines, the exact sort-and-scan threshold, the article's
  Powell threshold and class-weight searches, a PSD factorization (8847, 8860).
* :mod:`kexue_lib.pair_matching`: the synthetic sentence-matching task and stacked bi-encoder / interaction
  models trained per seed, with best-on-validation selection (8860).
* :mod:`kexue_lib.emo`: the EMO loss (earth mover's distance to a one-hot label under the cosine cost of a frozen
  embedding, O(B V + V d) memory), the CE + EMO mix and soft-label OT bounds (9797).
* :mod:`kexue_lib.multitask`: multi-task weightings (initial/prior/real-time normalisation, generalised mean,
  uncertainty, gradient norm) and the primary/auxiliary update (closed form, coordinate rule, NNLS) (8870, 8907).

Part VII, sequences and tokenizers

* :mod:`kexue_lib.rnn`: the parallel linear recurrence (scan; diagonal, dense or complex) and DEER: Picard and
  Newton sweeps that solve a non-linear RNN (tanh, GRU) over the whole sequence, with implicit gradients (9783).
* :mod:`kexue_lib.rnn_models`: small recurrent models trained as per-seed ensembles (K-sweep linear RNN,
  linear RNN + MLP stack, GRU) on a tanh-RNN teacher (9783).
* :mod:`kexue_lib.tokenize`: a BytePiece-style byte-level unigram tokenizer: n-gram training with pruning, exact
  Viterbi, alpha sampling, lossless encode/decode of any bytes, JSON save/load (9752).
* :mod:`kexue_lib.long_range`: a synthetic fine-grained sequence-classification task, a gated diagonal
  linear-recurrence (EMA) baseline, self-pretraining then fine-tuning (9787).
"""
from . import runtime, verify

__version__ = "0.1.0"
__all__ = ["verify", "runtime", "__version__"]
