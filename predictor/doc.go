// Package predictor implements SparseLoRA's training-free channel predictor
// (SPEC section 4): rank-r SVD factors of the frozen gate, up, q, k and v
// weights (randomized SVD on the GPU, the small dense SVD on the host with
// gonum, cached on disk), the per-batch selection of FFN and attention
// channels computed on the GPU into index lists that the sparse GEMMs read,
// the sparsity configuration files of the reference implementation, and the
// analytic FLOP accounting of dense and sparse steps.
//
// Ownership: an Estimator owns its factors and a Selector its scores and
// index lists; each Release frees them. The lists a Selector returns are
// valid for the work recorded after the selection and until that layer's
// next selection overwrites them: callers read them, never free them. The
// model's weights are only read.
package predictor
