// RANSAC-PnP core: framework-free C ABI (CPU) for the pose of an object from 2D-3D correspondences, as in DSAC*.
//
// Per batch item b (docs/ransac_pnp.md has the full description):
//   1. Sampling (sampling.cc): minimal sets of RP_MINIMAL_SET_SIZE = 4 correspondences are drawn in proportion to
//      the sampling weights; P3P (p3p.cc, our own Grunert-style solver) on the first three gives up to 4 poses, the
//      fourth point picks one; a set whose 4 points do not all reproject within threshold_px (in front of the
//      camera) is re-drawn, at most RP_MAX_SAMPLE_TRIES times per hypothesis.
//   2. Scoring (scoring.cc): soft inlier count sum_i sigmoid(beta * (tau - e_i)), beta = RP_SCORE_BETA_TIMES_TAU / tau,
//      e_i the reprojection error in pixels, tau = threshold_px; points behind the camera contribute 0.
//   3. Refinement (refinement.cc): the best hypothesis is refined by Levenberg-Marquardt on its inliers (e_i < tau),
//      repeated while the inlier set grows, at most max_refine_iterations times.
//
// Conventions: R [3, 3] and t_mm [3] map model coordinates (mm) to camera coordinates: X_cam = R X + t. A camera
// point projects to pixels (u, v) = (p0 / p2, p1 / p2) with p = K X_cam (OpenCV: pixel centres at integers).
//
// All pointers are contiguous row-major: pixels float [B, N, 2], coords_mm float [B, N, 3], K float [B, 3, 3],
// weights float [B, N] (NULL: all 1), valid uint8 [B, N] (NULL: all valid; any nonzero byte is true, so a C++
// bool array works), R float [B, 3, 3], t_mm float [B, 3], inliers uint8 [B, N], score float [B], ok uint8 [B],
// item_status int32 [B] (NULL: not written).
//
// Which correspondences count: a correspondence is *used* when valid is true and its pixel and 3D coordinates are
// all finite; unused ones are ignored for sampling, scoring and refinement and are never inliers. A used
// correspondence with weight 0 is not sampled but is scored and refined like any other.
//
// Errors: the call returns RP_ERR_INVALID_ARGUMENT for malformed arguments (sizes < 0, num_hypotheses outside
// [1, RP_MAX_HYPOTHESES], threshold_px not finite and > 0, max_refine_iterations outside
// [0, RP_MAX_REFINE_ITERATIONS], a non-finite entry of K, a negative or non-finite weight, NULL arrays).
// Degenerate but well-formed items are not errors: they get ok = 0, R = identity, t = 0, inliers all 0, score 0,
// and item_status says why (RP_ITEM_*).
//
// Determinism: item b draws from its own generator, seeded from (seed, b); results do not depend on how a thread
// pool splits the batch.
//
// Training form (DSAC): rp_cpu_ransac_pnp_hypotheses returns every hypothesis (its refined pose, its score, its minimal
// set and its minimal-solver pose) instead of the best one, and rp_cpu_ransac_pnp_hypotheses_backward the gradient of
// a loss of those outputs w.r.t. coords_mm. The derivatives are in derivatives.cc (the math is at its top and in
// docs/ransac_pnp.md, "Training form (DSAC)"); the hypotheses are the ones the inference call chooses from.
//
// Build flags: -fno-math-errno -fno-trapping-math let g++ vectorize the scoring loop (scoring.cc); they change no
// result (no errno, no FP traps are used). -ffp-contract=off as for the Projection Loss.
#ifndef SYNTHPOSE_RANSAC_PNP_CORE_H_
#define SYNTHPOSE_RANSAC_PNP_CORE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Return codes of the calls.
#define RP_OK 0
#define RP_ERR_INVALID_ARGUMENT -1

// Per-item outcome (item_status).
#define RP_ITEM_OK 0
// Fewer than RP_MINIMAL_SET_SIZE used correspondences with weight > 0.
#define RP_ITEM_TOO_FEW_POINTS 1
// |det K| <= RP_K_SINGULAR_REL_TOL * max|K_ij|^3.
#define RP_ITEM_SINGULAR_K 2
// The 3D coordinates of the sampleable correspondences are (nearly) collinear: no pose is determined.
#define RP_ITEM_COLLINEAR_POINTS 3
// No minimal set passed the 4-point check within RP_MAX_SAMPLE_TRIES tries for any hypothesis.
#define RP_ITEM_NO_HYPOTHESIS 4

// Size of a minimal set: 3 points for P3P plus 1 to choose among its solutions.
#define RP_MINIMAL_SET_SIZE 4
// Tries (draw + P3P + 4-point check) per hypothesis before that hypothesis is given up. DSAC* effectively retries
// without bound; this bound keeps the cost of hopeless items (e.g. ~all outliers) at a few tens of ms.
#define RP_MAX_SAMPLE_TRIES 1000
// Upper bounds of the parameters (sanity limits, not tuned values).
#define RP_MAX_HYPOTHESES 65536
#define RP_MAX_REFINE_ITERATIONS 1000
// Soft inlier score: beta = RP_SCORE_BETA_TIMES_TAU / threshold_px (DSAC*'s "inlier alpha" of 5 over the threshold).
#define RP_SCORE_BETA_TIMES_TAU 5.0f
// A camera point is in front of the camera when its camera z exceeds this (mm).
#define RP_MIN_DEPTH_MM 1e-3
// K counts as singular when |det K| <= RP_K_SINGULAR_REL_TOL * max|K_ij|^3.
#define RP_K_SINGULAR_REL_TOL 1e-9

// Human-readable text for a return code (RP_OK, RP_ERR_*) and for an item status (RP_ITEM_*).
const char* rp_error_string(int code);
const char* rp_item_status_string(int status);

// Checks the scalar parameters alone (what the TF op checks when it is constructed). RP_OK or RP_ERR_INVALID_ARGUMENT.
int rp_check_parameters(int num_hypotheses, float threshold_px, int max_refine_iterations);

// RANSAC-PnP on batch items [batch_begin, batch_end) so a thread pool can split the batch; the arrays are the full
// [B, ...] arrays. Thread-safe (all scratch memory is per call).
int rp_cpu_ransac_pnp(const float* pixels, const float* coords_mm, const float* K, const float* weights,
                      const uint8_t* valid, int batch, int n, int num_hypotheses, float threshold_px,
                      int max_refine_iterations, uint64_t seed, float* R, float* t_mm, uint8_t* inliers, float* score,
                      uint8_t* ok, int32_t* item_status, int batch_begin, int batch_end);

// Training form: every hypothesis. Per item b and hypothesis j < H = num_hypotheses, drawn exactly as
// rp_cpu_ransac_pnp draws them (same per-item generator): R_init [B, H, 3, 3], t_init_mm [B, H, 3] the minimal
// solver's pose p0_j; score [B, H] the soft inlier count of p0_j; R [B, H, 3, 3], t_mm [B, H, 3] p0_j refined
// (at most max_refine_iterations rounds, as rp_cpu_ransac_pnp refines the best one); minimal_sets int32 [B, H, 4]
// the indices (into N) of the 4 correspondences; ok uint8 [B, H]. Where no hypothesis j could be made, or the item is
// degenerate (item_status as for rp_cpu_ransac_pnp): ok = 0, R = R_init = identity, t = t_init = 0, score = 0,
// minimal_sets = -1. max_refine_points > 0 caps the correspondences refinement uses: an item with more used ones
// refines on every stride-th of them (stride = ceil(used / max_refine_points), the inliers taken among those),
// which bounds the cost of refining every hypothesis; 0 refines on all inliers. Without the cap (or with at most
// max_refine_points used correspondences) the best-scoring hypothesis (first on ties) refined is what
// rp_cpu_ransac_pnp returns. Same argument checks and return codes as rp_cpu_ransac_pnp, and
// RP_ERR_INVALID_ARGUMENT for max_refine_points < 0.
int rp_cpu_ransac_pnp_hypotheses(const float* pixels, const float* coords_mm, const float* K, const float* weights,
                                 const uint8_t* valid, int batch, int n, int num_hypotheses, float threshold_px,
                                 int max_refine_iterations, int max_refine_points, uint64_t seed, float* R,
                                 float* t_mm, float* score, int32_t* minimal_sets, uint8_t* ok, float* R_init,
                                 float* t_init_mm, int32_t* item_status, int batch_begin, int batch_end);

// Backward of the training form: grad_coords_mm [B, N, 3] = dL/dcoords_mm given the forward's inputs (weights are
// not needed: they only steer sampling), its outputs, the same parameters (max_refine_points included: the refined
// poses' inliers are taken among the same candidates), and the upstream gradients grad_R
// [B, H, 3, 3], grad_t_mm [B, H, 3], grad_score [B, H], grad_R_init [B, H, 3, 3], grad_t_init_mm [B, H, 3] (each may
// be NULL: zero). Unused correspondences, ok = 0 hypotheses and degenerate items get exactly 0; no entry is ever NaN
// or inf (a non-finite one is written as 0). RP_ERR_INVALID_ARGUMENT for bad sizes or parameters, NULL arrays, a
// non-finite K, or a minimal set of an ok hypothesis that is not 4 distinct indices in [0, N) (nothing is written
// then). Thread-safe, deterministic, items independent (a thread pool may split [batch_begin, batch_end)).
int rp_cpu_ransac_pnp_hypotheses_backward(const float* pixels, const float* coords_mm, const float* K,
                                          const uint8_t* valid, int batch, int n, int num_hypotheses,
                                          float threshold_px, int max_refine_iterations, int max_refine_points,
                                          const float* R, const float* t_mm, const float* R_init,
                                          const float* t_init_mm, const int32_t* minimal_sets, const uint8_t* ok,
                                          const float* grad_R, const float* grad_t_mm, const float* grad_score,
                                          const float* grad_R_init, const float* grad_t_init_mm,
                                          float* grad_coords_mm, int batch_begin, int batch_end);

// The minimal solver alone (for tests): P3P on 3 pixel <-> model point correspondences. pixels [3, 2], coords_mm
// [3, 3], K [3, 3]; writes up to 4 poses into R_out [4, 3, 3], t_out_mm [4, 3] and returns how many (0..4), or
// RP_ERR_INVALID_ARGUMENT for NULL pointers or a singular / non-finite K.
int rp_p3p(const float* pixels, const float* coords_mm, const float* K, float* R_out, float* t_out_mm);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // SYNTHPOSE_RANSAC_PNP_CORE_H_
