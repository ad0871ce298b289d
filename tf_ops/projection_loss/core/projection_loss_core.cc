// Projection Loss core, CPU implementation (framework-free). See projection_loss_core.h and
// docs/projection_loss.md for the exact rules; projection_loss_core.cu implements the same rules on the GPU.
//
// Build note: compile with -ffp-contract=off (no FMA contraction). When projection_loss_core.cu is linked in as
// well, define PL_WITH_CUDA so that the CUDA stubs below are left out.
#include "projection_loss_core.h"

#include <cmath>
#include <cstdint>
#include <vector>

// No `#pragma GCC optimize("fp-contract=off")` here: GCC does not inline header functions (std::floor,
// vector::operator[]) into functions with different optimize attributes, which made the kernels ~3x slower.
// The build passes -ffp-contract=off; clang honours the pragma without that cost.
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace {

constexpr int kRadius = PL_WINDOW_RADIUS;
constexpr float kTent = PL_TENT_WIDTH;

// The window's cells other than the centre, sorted by (dr^2 + dc^2, dr, dc): by distance, ties in row-major
// order. Ring = Chebyshev distance max(|dr|, |dc|), non-decreasing along the table.
struct Offset {
  int dr, dc, ring;
};
constexpr int kNumOffsets = (2 * kRadius + 1) * (2 * kRadius + 1) - 1;
static_assert(kRadius == 2, "the offset table below is written for PL_WINDOW_RADIUS == 2");
constexpr int kRing2Start = 8;  // kOffsets[0..7] is ring 1
constexpr Offset kOffsets[kNumOffsets] = {
    {-1, 0, 1},  {0, -1, 1},  {0, 1, 1},   {1, 0, 1},                                           // d2 = 1
    {-1, -1, 1}, {-1, 1, 1},  {1, -1, 1},  {1, 1, 1},                                           // d2 = 2
    {-2, 0, 2},  {0, -2, 2},  {0, 2, 2},   {2, 0, 2},                                           // d2 = 4
    {-2, -1, 2}, {-2, 1, 2},  {-1, -2, 2}, {-1, 2, 2}, {1, -2, 2}, {1, 2, 2}, {2, -1, 2}, {2, 1, 2},  // d2 = 5
    {-2, -2, 2}, {-2, 2, 2},  {2, -2, 2},  {2, 2, 2},                                           // d2 = 8
};

// Pixel of one point in the drawn image; returns false when the point is not drawn.
// (us, vs): the point in drawn-image pixels; (row, col): its pixel; d2: squared distance to the pixel centre.
// `pixel` is the index in the padded maps: (row + R) * (ws + 2R) + (col + R).
inline bool PixelOf(float u, float v, float scale, int hs, int ws, int* pixel, float* us_out, float* vs_out,
                    float* d2) {
  const float us = u * scale;
  const float vs = v * scale;
  // round_half_up(x) is in [0, n) exactly when -0.5 <= x < n - 0.5 (false for NaN and +-inf).
  if (!(us >= -0.5f && us < static_cast<float>(ws) - 0.5f && vs >= -0.5f && vs < static_cast<float>(hs) - 0.5f))
    return false;
  // For x >= -0.5, truncation t = (int)x is floor(x) when x >= 0, and 0 for x in [-0.5, 0) where x - t < 0.5:
  // t + (x - t >= 0.5) equals round_half_up(x) = floor(x) + (x - floor(x) >= 0.5) (x - t is exact).
  const int tu = static_cast<int>(us);
  const int tv = static_cast<int>(vs);
  const int col = tu + ((us - static_cast<float>(tu)) >= 0.5f ? 1 : 0);
  const int row = tv + ((vs - static_cast<float>(tv)) >= 0.5f ? 1 : 0);
  const float dx = us - static_cast<float>(col);
  const float dy = vs - static_cast<float>(row);
  const float dxx = dx * dx;
  const float dyy = dy * dy;
  *d2 = dxx + dyy;
  *us_out = us;
  *vs_out = vs;
  *pixel = (row + kRadius) * (ws + 2 * kRadius) + (col + kRadius);
  return true;
}

// Per-thread scratch. Invariant between calls: own and gown are all -1.
struct Scratch {
  std::vector<int32_t> own;   // [Hs*Ws] owner (pred point index) of each drawn pixel, -1 = not drawn
  std::vector<int32_t> gown;  // [Hs*Ws] lowest gt point index in each gt pixel, -1 = not drawn
  std::vector<int32_t> pix;   // [N] pixel of each pred point, -1 = not drawn
  std::vector<float> d2;      // [N] squared distance of each pred point to its pixel centre
  std::vector<float> us, vs;  // [N] pred points in drawn pixels
  std::vector<int32_t> gpix;  // [M] pixel of each gt point, -1 = not drawn

  void Prepare(int64_t pixels, int n, int m) {
    if (static_cast<int64_t>(own.size()) < pixels) {
      own.assign(pixels, -1);
      gown.assign(pixels, -1);
    }
    if (static_cast<int>(pix.size()) < n) {
      pix.resize(n);
      d2.resize(n);
      us.resize(n);
      vs.resize(n);
    }
    if (static_cast<int>(gpix.size()) < m) gpix.resize(m);
  }
};

thread_local Scratch tls_scratch;

struct Counts {
  int64_t inter = 0, uni = 0;
};

// Draws both images of one batch element into the scratch maps; returns I and U.
Counts Draw(Scratch& s, const float* pred, const float* gt, int n, int m, float scale, int hs, int ws) {
  // Branch-free updates (the "new pixel?" tests are unpredictable and dominated the run time as branches).
  int64_t nx = 0, ny = 0, ni = 0;
  int32_t* const own = s.own.data();
  int32_t* const gown = s.gown.data();
  int32_t* const gpix = s.gpix.data();
  int32_t* const pix = s.pix.data();
  float* const pd2 = s.d2.data();
  float* const pus = s.us.data();
  float* const pvs = s.vs.data();
  float dummy_u, dummy_v, dummy_d2;
  for (int j = 0; j < m; ++j) {
    int p;
    if (PixelOf(gt[2 * j], gt[2 * j + 1], scale, hs, ws, &p, &dummy_u, &dummy_v, &dummy_d2)) {
      gpix[j] = p;
      const int32_t o = gown[p];
      const bool fresh = o < 0;
      gown[p] = fresh ? j : o;  // j increases: the first gt point keeps the pixel
      ny += fresh;
    } else {
      gpix[j] = -1;
    }
  }
  for (int i = 0; i < n; ++i) {
    int p;
    float d2;
    if (PixelOf(pred[2 * i], pred[2 * i + 1], scale, hs, ws, &p, &pus[i], &pvs[i], &d2)) {
      pix[i] = p;
      pd2[i] = d2;
      const int32_t o = own[p];
      const bool fresh = o < 0;
      const float od2 = pd2[fresh ? i : o];
      own[p] = (fresh || d2 < od2) ? i : o;  // ties keep the lower index (o < i)
      nx += fresh;
      ni += fresh & (gown[p] >= 0);
    } else {
      pix[i] = -1;
    }
  }
  Counts c;
  c.inter = ni;
  c.uni = nx + ny - ni;
  return c;
}

void Clear(Scratch& s, int n, int m) {
  for (int i = 0; i < n; ++i)
    if (s.pix[i] >= 0) s.own[s.pix[i]] = -1;
  for (int j = 0; j < m; ++j)
    if (s.gpix[j] >= 0) s.gown[s.gpix[j]] = -1;
}

inline float LossOf(const Counts& c) {
  if (c.uni == 0) return 0.0f;
  return 1.0f - static_cast<float>(c.inter) / static_cast<float>(c.uni);
}

// Gradient of one batch element (maps already drawn). g[2 * i + k] is overwritten.
// The maps are padded by R empty pixels on every side, so the window needs no bounds checks.
void Backward(const Scratch& s, const Counts& c, float grad_loss, int n, int m, float scale, int hs, int ws,
              float* g) {
  (void)hs;
  for (int i = 0; i < 2 * n; ++i) g[i] = 0.0f;
  if (c.uni == 0 || grad_loss == 0.0f) return;
  const float uf = static_cast<float>(c.uni);
  const float inter = static_cast<float>(c.inter);
  // Coefficients of the unit direction vectors, in dL/d(camera pixel) units.
  const float coef_missing = grad_loss * (1.0f / uf) * scale / kTent;        // |dL/dX| = 1/U
  const float coef_extra = grad_loss * (inter / (uf * uf)) * scale / kTent;  // dL/dX = I/U^2
  const int stride = ws + 2 * kRadius;
  int lin[kNumOffsets];
  for (int k = 0; k < kNumOffsets; ++k) lin[k] = kOffsets[k].dr * stride + kOffsets[k].dc;
  const int32_t* const own = s.own.data();
  const int32_t* const gown = s.gown.data();
  const float* const us = s.us.data();
  const float* const vs = s.vs.data();

  // Extra pixels (pred on, gt off): their owner moves toward the nearest gt pixel of the window, or (no gt pixel
  // in the window) away from the pixel centre.
  if (c.inter > 0) {
    for (int i = 0; i < n; ++i) {
      const int p = s.pix[i];
      if (p < 0 || own[p] != i || gown[p] >= 0) continue;
      const int row = p / stride - kRadius, col = p % stride - kRadius;
      // Nearest gt pixel of the window: the offsets are sorted by (squared distance, row-major order), so the
      // first hit is the one a full row-major scan keeping the first minimum would find.
      int best = -1;
      for (int k = 0; k < kNumOffsets; ++k) {
        if (gown[p + lin[k]] >= 0) {
          best = k;
          break;
        }
      }
      if (best >= 0) {  // pulled toward the gt pixel
        const float vx = us[i] - static_cast<float>(col + kOffsets[best].dc);
        const float vy = vs[i] - static_cast<float>(row + kOffsets[best].dr);
        const float d = std::sqrt(vx * vx + vy * vy);
        g[2 * i] += coef_extra * vx / d;
        g[2 * i + 1] += coef_extra * vy / d;
      } else {  // pushed away from its own pixel centre
        const float vx = us[i] - static_cast<float>(col);
        const float vy = vs[i] - static_cast<float>(row);
        const float d = std::sqrt(vx * vx + vy * vy);
        if (d > 0.0f) {
          g[2 * i] -= coef_extra * vx / d;
          g[2 * i + 1] -= coef_extra * vy / d;
        }
      }
    }
  }

  // Missing pixels (gt on, pred off): the owner, among the owners of the drawn pixels of the window, nearest to the
  // pixel centre (ties: lowest index) is pulled toward it.
  for (int j = 0; j < m; ++j) {
    const int p = s.gpix[j];
    if (p < 0 || gown[p] != j || own[p] >= 0) continue;
    const float fr = static_cast<float>(p / stride - kRadius), fc = static_cast<float>(p % stride - kRadius);
    int best = -1;
    float best_d2 = 0.0f;
    // Cells ring by ring (Chebyshev distance 1..R); a point in ring q is at least q - 0.5 from the centre, so the
    // search stops once the best squared distance is below (q - 0.5)^2 (same result as scanning the window).
    for (int k = 0; k < kNumOffsets; ++k) {
      if (k == kRing2Start && best >= 0 && best_d2 < 2.25f) break;  // ring 2 points are >= 1.5 away
      const int kk = own[p + lin[k]];
      if (kk < 0) continue;
      const float vx = us[kk] - fc;
      const float vy = vs[kk] - fr;
      const float vxx = vx * vx;
      const float vyy = vy * vy;
      const float d2 = vxx + vyy;
      if (best < 0 || d2 < best_d2 || (d2 == best_d2 && kk < best)) {
        best = kk;
        best_d2 = d2;
      }
    }
    if (best >= 0) {
      const float vx = us[best] - fc;
      const float vy = vs[best] - fr;
      const float d = std::sqrt(best_d2);
      g[2 * best] += coef_missing * vx / d;
      g[2 * best + 1] += coef_missing * vy / d;
    }
  }
}

bool ValidSizes(const void* a, const void* b, int batch, int n, int m, int begin, int end) {
  return a != nullptr && b != nullptr && batch >= 0 && n > 0 && m > 0 && begin >= 0 && begin <= end &&
         end <= batch;
}

}  // namespace

// Draws both images of each item in [batch_begin, batch_end) into this thread's scratch and calls
// per_item(scratch, counts, b, drawn_height, drawn_width) for it; the scratch is cleared after each item.
template <typename PerItem>
int ForEachItem(const float* pred, const float* gt, int n_pred, int n_gt, int height, int width, float scale,
                int batch_begin, int batch_end, PerItem per_item) {
  int hs, ws;
  const int rc = pl_drawn_size(height, width, scale, &hs, &ws);
  if (rc != PL_OK) return rc;
  Scratch& s = tls_scratch;
  s.Prepare(static_cast<int64_t>(hs + 2 * kRadius) * (ws + 2 * kRadius), n_pred, n_gt);
  for (int b = batch_begin; b < batch_end; ++b) {
    const Counts c = Draw(s, pred + static_cast<int64_t>(b) * n_pred * 2, gt + static_cast<int64_t>(b) * n_gt * 2,
                          n_pred, n_gt, scale, hs, ws);
    per_item(s, c, b, hs, ws);
    Clear(s, n_pred, n_gt);
  }
  return PL_OK;
}

extern "C" {

const char* pl_error_string(int code) {
  switch (code) {
    case PL_OK: return "ok";
    case PL_ERR_INVALID_ARGUMENT: return "invalid argument (sizes, height/width/scale must be > 0, null pointer)";
    case PL_ERR_IMAGE_TOO_LARGE: return "drawn image too large (round(height*scale)*round(width*scale) > 2^24)";
    case PL_ERR_CUDA: return "CUDA error";
    case PL_ERR_NO_CUDA: return "library built without CUDA or no CUDA device";
    case PL_ERR_WORKSPACE: return "workspace too small";
    default: return "unknown error";
  }
}

int pl_drawn_size(int height, int width, float scale, int* drawn_height, int* drawn_width) {
  if (!(height > 0 && width > 0 && scale > 0.0f && std::isfinite(scale))) return PL_ERR_INVALID_ARGUMENT;
  const double h = std::floor(static_cast<double>(height) * static_cast<double>(scale) + 0.5);
  const double w = std::floor(static_cast<double>(width) * static_cast<double>(scale) + 0.5);
  if (h < 1.0 || w < 1.0) return PL_ERR_INVALID_ARGUMENT;
  if (h * w > static_cast<double>(PL_MAX_DRAWN_PIXELS)) return PL_ERR_IMAGE_TOO_LARGE;
  if (drawn_height) *drawn_height = static_cast<int>(h);
  if (drawn_width) *drawn_width = static_cast<int>(w);
  return PL_OK;
}

int pl_cpu_forward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height, int width,
                   float scale, float* loss, int batch_begin, int batch_end) {
  if (!ValidSizes(pred, gt, batch, n_pred, n_gt, batch_begin, batch_end) || loss == nullptr)
    return PL_ERR_INVALID_ARGUMENT;
  return ForEachItem(pred, gt, n_pred, n_gt, height, width, scale, batch_begin, batch_end,
                     [&](Scratch&, const Counts& c, int b, int, int) { loss[b] = LossOf(c); });
}

int pl_cpu_backward(const float* pred, const float* gt, const float* grad_loss, int batch, int n_pred, int n_gt,
                    int height, int width, float scale, float* grad_pred, int batch_begin, int batch_end) {
  if (!ValidSizes(pred, gt, batch, n_pred, n_gt, batch_begin, batch_end) || grad_loss == nullptr ||
      grad_pred == nullptr)
    return PL_ERR_INVALID_ARGUMENT;
  return ForEachItem(pred, gt, n_pred, n_gt, height, width, scale, batch_begin, batch_end,
                     [&](Scratch& s, const Counts& c, int b, int hs, int ws) {
                       Backward(s, c, grad_loss[b], n_pred, n_gt, scale, hs, ws,
                                grad_pred + static_cast<int64_t>(b) * n_pred * 2);
                     });
}

int pl_cpu_forward_backward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height,
                            int width, float scale, float* loss, float* grad_unit, int batch_begin, int batch_end) {
  if (!ValidSizes(pred, gt, batch, n_pred, n_gt, batch_begin, batch_end) || loss == nullptr ||
      grad_unit == nullptr)
    return PL_ERR_INVALID_ARGUMENT;
  return ForEachItem(pred, gt, n_pred, n_gt, height, width, scale, batch_begin, batch_end,
                     [&](Scratch& s, const Counts& c, int b, int hs, int ws) {
                       loss[b] = LossOf(c);
                       Backward(s, c, 1.0f, n_pred, n_gt, scale, hs, ws,
                                grad_unit + static_cast<int64_t>(b) * n_pred * 2);
                     });
}

#ifndef PL_WITH_CUDA
int pl_cuda_available(void) { return 0; }
size_t pl_cuda_workspace_bytes(int, int, int, float) { return 0; }
int pl_cuda_forward(const float*, const float*, int, int, int, int, int, float, float*, void*, size_t, void*) {
  return PL_ERR_NO_CUDA;
}
int pl_cuda_backward(const float*, const float*, const float*, int, int, int, int, int, float, float*, void*, size_t,
                     void*) {
  return PL_ERR_NO_CUDA;
}
int pl_cuda_forward_backward(const float*, const float*, int, int, int, int, int, float, float*, float*, void*,
                             size_t, void*) {
  return PL_ERR_NO_CUDA;
}
#endif

}  // extern "C"
