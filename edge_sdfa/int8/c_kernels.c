/* The C int8 kernel set (C99 + POSIX threads), compiled at install time by setup.py and loaded
 * with ctypes by edge_sdfa/int8/c_kernels.py; bit-exact with the numpy set
 * (edge_sdfa/int8/reference.py, arith.py). No intrinsics: the inner loops are written so that
 * gcc/clang auto-vectorise them on any target. Never built with -march=native: on x86-64 (GCC,
 * glibc) the per-row workers are cloned for AVX-512/AVX2/baseline and picked at load time
 * (target_clones, ifunc); on aarch64 the baseline armv8-a has NEON. -DESD_NO_CLONES turns the
 * clones off (a libc without ifunc).
 *
 * Conventions: all arrays C-contiguous; sizes int64; spikes uint8; weights/errors int8.
 * Signed right shifts of negative values are arithmetic (gcc and clang guarantee it).
 * Work is handed out in dynamic chunks by a small pool of POSIX threads whose idle workers sleep
 * on a condition variable (never spin): on a shared device a spinning or descheduled thread must
 * not hold the others up, and the pool needs no process-wide setting (OpenMP's libgomp spins at
 * its barriers unless OMP_WAIT_POLICY is set in the environment, which a library must not do).
 * The Python side only calls a kernel where its integer bounds hold (see c_kernels.py).
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(ESD_NO_CLONES)
#define ESD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ESD_CLONES
#endif

#define CHUNK16 255 /* binary rows summed in int16: 255 * 128 = 32640 <= 32767 */
#define MASTER_BITS 8
#define DECAY_BITS 12
#define DELTA_BITS 7

int esd_abi_version(void) { return 9; }

/* The CPU features this build's compiler flags let it use beyond the architecture's baseline, in
 * the kernel's vocabulary (aarch64: HWCAP / the "Features" line of /proc/cpuinfo; x86-64: the
 * "flags" line). c_kernels.py reads this string (no code of the library runs) and refuses the
 * library on a CPU that lacks one, e.g. a +dotprod (Pi 5) build on a Pi 4, which would die of
 * SIGILL. The x86-64 target_clones are picked at load time and need nothing here. */
const char esd_built_features[] = ""
#if defined(__aarch64__)
#if defined(__ARM_FEATURE_DOTPROD)
    " asimddp"
#endif
#if defined(__ARM_FEATURE_ATOMICS)
    " atomics"
#endif
#if defined(__ARM_FEATURE_QRDMX)
    " asimdrdm"
#endif
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    " asimdhp"
#endif
#if defined(__ARM_FEATURE_SVE)
    " sve"
#endif
#if defined(__ARM_FEATURE_SVE2)
    " sve2"
#endif
#if defined(__ARM_FEATURE_MATMUL_INT8)
    " i8mm"
#endif
#elif defined(__x86_64__)
#if defined(__AVX__)
    " avx"
#endif
#if defined(__AVX2__)
    " avx2"
#endif
#if defined(__FMA__)
    " fma"
#endif
#if defined(__BMI2__)
    " bmi2"
#endif
#if defined(__AVX512F__)
    " avx512f"
#endif
#if defined(__AVX512BW__)
    " avx512bw"
#endif
#if defined(__AVX512VL__)
    " avx512vl"
#endif
#if defined(__AVX512VNNI__)
    " avx512_vnni"
#endif
#endif
    ;

/* ------------------------------------------------------------------------------------------ */
/* the thread pool: parallel_for(total, chunk, body, ctx) runs body(ctx, begin, end, tid) over
 * chunks of [0, total) on the caller (tid 0) and the pool's workers (tid 1 ..); one loop at a
 * time (ctypes releases the GIL, so two Python threads may call in at once). */

#define ESD_MAX_THREADS 64

typedef void (*esd_body)(void *ctx, int64_t begin, int64_t end, int tid);

static struct {
    pthread_mutex_t run; /* one parallel loop at a time */
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    int wanted;  /* threads including the caller; 0: the CPUs online */
    int started; /* workers running (threads - 1) */
    unsigned long gen, start_gen;
    int busy;
    esd_body body;
    void *ctx;
    int64_t total, chunk, next;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, NULL, NULL, 0, 0, 0};

static void run_chunks(int tid)
{
    for (;;) {
        int64_t b = __atomic_fetch_add(&pool.next, pool.chunk, __ATOMIC_RELAXED);
        if (b >= pool.total)
            break;
        int64_t e = b + pool.chunk < pool.total ? b + pool.chunk : pool.total;
        pool.body(pool.ctx, b, e, tid);
    }
}

static void *pool_worker(void *arg)
{
    int tid = (int)(intptr_t)arg;
    pthread_mutex_lock(&pool.mu);
    unsigned long seen = pool.start_gen;
    for (;;) {
        while (pool.gen == seen)
            pthread_cond_wait(&pool.wake, &pool.mu);
        seen = pool.gen;
        pthread_mutex_unlock(&pool.mu);
        run_chunks(tid);
        pthread_mutex_lock(&pool.mu);
        if (--pool.busy == 0)
            pthread_cond_signal(&pool.idle);
    }
    return NULL;
}

static void pool_after_fork(void)
{
    /* the child has only the forking thread: forget the workers, start anew on first use */
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    pool.run = m;
    pool.mu = m;
    pool.wake = c;
    pool.idle = c;
    pool.started = 0;
    pool.busy = 0;
}

static int pool_size(void)
{
    int n = pool.wanted;
    if (n <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? (int)cpus : 1;
    }
    return n < 1 ? 1 : (n > ESD_MAX_THREADS ? ESD_MAX_THREADS : n);
}

/* Start the workers once (called with pool.run held); returns the threads including the caller. */
static int pool_start(void)
{
    static int atfork = 0;
    int n = pool_size();
    if (pool.started + 1 >= n)
        return pool.started + 1;
    if (!atfork) {
        pthread_atfork(NULL, NULL, pool_after_fork);
        atfork = 1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals go to Python's threads, not the workers */
    pthread_mutex_lock(&pool.mu);
    pool.start_gen = pool.gen;
    while (pool.started + 1 < n) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &attr, pool_worker, (void *)(intptr_t)(pool.started + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break; /* fewer threads: still correct */
        pool.started++;
    }
    pthread_mutex_unlock(&pool.mu);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pool.started + 1;
}

/* Per calling thread: 1 runs this thread's parallel loops on it alone (a small call, where
 * waking the pool costs more than it saves); 0 uses the pool. Like OpenMP's per-thread setting,
 * it never affects other callers. */
static __thread int call_threads;

int esd_set_call_threads(int n)
{
    int prev = call_threads;
    call_threads = n == 1 ? 1 : 0;
    return prev;
}

static void parallel_for(int64_t total, int64_t chunk, esd_body body, void *ctx)
{
    if (total <= 0)
        return;
    if (chunk < 1)
        chunk = 1;
    if (call_threads == 1) { /* no pool, no lock: tid 0 only, scratch is sized for every tid */
        body(ctx, 0, total, 0);
        return;
    }
    pthread_mutex_lock(&pool.run);
    int nt = total > chunk ? pool_start() : 1;
    if (nt <= 1) {
        body(ctx, 0, total, 0);
        pthread_mutex_unlock(&pool.run);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    pool.body = body;
    pool.ctx = ctx;
    pool.total = total;
    pool.chunk = chunk;
    pool.next = 0;
    pool.busy = nt - 1;
    pool.gen++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    run_chunks(0);
    pthread_mutex_lock(&pool.mu);
    while (pool.busy > 0)
        pthread_cond_wait(&pool.idle, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&pool.run);
}

/* Threads a parallel loop uses (the caller included). */
int esd_num_threads(void)
{
    pthread_mutex_lock(&pool.run);
    int n = pool.started > 0 ? pool.started + 1 : pool_size();
    pthread_mutex_unlock(&pool.run);
    return n;
}

/* Ask for n threads (0: one per CPU online); takes effect before the first parallel loop. */
void esd_set_num_threads(int n)
{
    pthread_mutex_lock(&pool.run);
    if (pool.started == 0)
        pool.wanted = n;
    pthread_mutex_unlock(&pool.run);
}

/* The most threads a parallel loop can use (every tid is below it): size per-thread scratch by it. */
static int max_threads(void)
{
    pthread_mutex_lock(&pool.run);
    int n = pool_size();
    if (pool.started + 1 > n)
        n = pool.started + 1;
    pthread_mutex_unlock(&pool.run);
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* sparse structure of the spikes */

/* Per row of x[R, K]: the number of nonzeros; returns the largest value (1: binary). */
typedef struct {
    const uint8_t *x;
    int64_t K;
    int64_t *counts;
    int64_t *vmax; /* per thread */
} row_counts_args;

static void row_counts_body(void *ctx, int64_t r0, int64_t r1, int tid)
{
    row_counts_args *A = (row_counts_args *)ctx;
    int64_t vmax = A->vmax[tid];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = A->x + r * A->K;
        int64_t c = 0;
        unsigned mx = 0;
        for (int64_t k = 0; k < A->K; k++) {
            unsigned v = row[k];
            c += v != 0;
            mx = v > mx ? v : mx;
        }
        A->counts[r] = c;
        if ((int64_t)mx > vmax)
            vmax = mx;
    }
    A->vmax[tid] = vmax;
}

int64_t esd_row_counts(const uint8_t *restrict x, int64_t R, int64_t K, int64_t *restrict counts)
{
    int64_t vmax[ESD_MAX_THREADS] = {0};
    row_counts_args A = {x, K, counts, vmax};
    parallel_for(R, 32, row_counts_body, &A);
    int64_t m = 0;
    for (int i = 0; i < ESD_MAX_THREADS; i++)
        m = vmax[i] > m ? vmax[i] : m;
    return m;
}

typedef struct {
    const uint8_t *x;
    int64_t K;
    const int64_t *starts;
    int32_t *idx;
    uint8_t *val;
    int binary;
} csr_fill_args;

static void csr_fill_body(void *ctx, int64_t r0, int64_t r1, int tid)
{
    csr_fill_args *A = (csr_fill_args *)ctx;
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = A->x + r * A->K;
        int64_t p = A->starts[r];
        int32_t *restrict idx = A->idx;
        if (A->binary) {
            for (int64_t k = 0; k < A->K; k++) {
                idx[p] = (int32_t)k;
                p += row[k] != 0;
            }
        } else {
            uint8_t *restrict val = A->val;
            for (int64_t k = 0; k < A->K; k++) {
                uint8_t v = row[k];
                idx[p] = (int32_t)k;
                val[p] = v;
                p += v != 0;
            }
        }
    }
}

/* Padded CSR fill: row r's nonzeros go to idx[starts[r] ...] (one spare slot per row, so the
 * branchless fill never writes into the next row); values into val unless binary. */
void esd_csr_fill(const uint8_t *restrict x, int64_t R, int64_t K, const int64_t *restrict starts,
                  int32_t *restrict idx, uint8_t *restrict val, int binary)
{
    csr_fill_args A = {x, K, starts, idx, val, binary};
    parallel_for(R, 32, csr_fill_body, &A);
}

/* Per input k and step t the rows r = t * N + n with a spike, input-major so that all steps of
 * one input are contiguous: smp[ptr[k*T+t] : ptr[k*T+t+1]] (and their values in sval unless
 * binary). ptr has K*T+1 slots. */
int esd_csc(const int64_t *restrict starts, const int64_t *restrict ends, const int32_t *restrict idx,
            const uint8_t *restrict val, int binary, int64_t T, int64_t N, int64_t K, int64_t *restrict ptr,
            int32_t *restrict smp, uint8_t *restrict sval)
{
    int64_t *pos = (int64_t *)malloc(sizeof(int64_t) * (size_t)(T * K + 1));
    if (!pos)
        return -1;
    memset(ptr, 0, sizeof(int64_t) * (size_t)(T * K + 1));
    for (int64_t t = 0; t < T; t++) {
        int64_t *cnt = ptr + t + 1;
        for (int64_t n = 0; n < N; n++) {
            int64_t r = t * N + n;
            for (int64_t p = starts[r]; p < ends[r]; p++)
                cnt[(int64_t)idx[p] * T]++;
        }
    }
    for (int64_t i = 0; i < T * K; i++)
        ptr[i + 1] += ptr[i];
    memcpy(pos, ptr, sizeof(int64_t) * (size_t)(T * K));
    for (int64_t t = 0; t < T; t++) {
        int64_t *ps = pos + t;
        for (int64_t n = 0; n < N; n++) {
            int64_t r = t * N + n;
            for (int64_t p = starts[r]; p < ends[r]; p++) {
                int64_t q = ps[(int64_t)idx[p] * T]++;
                smp[q] = (int32_t)r;
                if (!binary)
                    sval[q] = val[p];
            }
        }
    }
    free(pos);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* sums of selected int8 rows */

/* acc[0:tw] += sum_{p in [a, b)} w[sel[p] * ld + 0:tw], int16 (b - a <= CHUNK16). */
static inline void sum_rows16(const int8_t *restrict w, int64_t ld, const int32_t *restrict sel, int64_t a,
                              int64_t b, int16_t *restrict acc, int64_t tw)
{
    int64_t p = a;
    for (; p + 8 <= b; p += 8) {
        const int8_t *restrict w0 = w + sel[p] * ld;
        const int8_t *restrict w1 = w + sel[p + 1] * ld;
        const int8_t *restrict w2 = w + sel[p + 2] * ld;
        const int8_t *restrict w3 = w + sel[p + 3] * ld;
        const int8_t *restrict w4 = w + sel[p + 4] * ld;
        const int8_t *restrict w5 = w + sel[p + 5] * ld;
        const int8_t *restrict w6 = w + sel[p + 6] * ld;
        const int8_t *restrict w7 = w + sel[p + 7] * ld;
        for (int64_t c = 0; c < tw; c++)
            acc[c] += (int16_t)((((int16_t)w0[c] + (int16_t)w1[c]) + ((int16_t)w2[c] + (int16_t)w3[c])) +
                                (((int16_t)w4[c] + (int16_t)w5[c]) + ((int16_t)w6[c] + (int16_t)w7[c])));
    }
    if (p + 4 <= b) {
        const int8_t *restrict w0 = w + sel[p] * ld;
        const int8_t *restrict w1 = w + sel[p + 1] * ld;
        const int8_t *restrict w2 = w + sel[p + 2] * ld;
        const int8_t *restrict w3 = w + sel[p + 3] * ld;
        for (int64_t c = 0; c < tw; c++)
            acc[c] += (int16_t)(((int16_t)w0[c] + (int16_t)w1[c]) + ((int16_t)w2[c] + (int16_t)w3[c]));
        p += 4;
    }
    for (; p < b; p++) {
        const int8_t *restrict w0 = w + sel[p] * ld;
        for (int64_t c = 0; c < tw; c++)
            acc[c] += w0[c];
    }
}

/* acc32[0:tw] = sum_{p in [a, b)} val[p] * w[sel[p] * ld + 0:tw] exactly (the caller bounds it). */
static ESD_CLONES void sum_rows32(const int8_t *restrict w, int64_t ld, const int32_t *restrict sel,
                              const uint8_t *restrict val, int64_t a, int64_t b, int binary,
                              int16_t *restrict acc16, int32_t *restrict acc32, int64_t tw)
{
    for (int64_t c = 0; c < tw; c++)
        acc32[c] = 0;
    if (binary) {
        for (int64_t p0 = a; p0 < b; p0 += CHUNK16) {
            int64_t p1 = p0 + CHUNK16 < b ? p0 + CHUNK16 : b;
            memset(acc16, 0, sizeof(int16_t) * (size_t)tw);
            sum_rows16(w, ld, sel, p0, p1, acc16, tw);
            for (int64_t c = 0; c < tw; c++)
                acc32[c] += acc16[c];
        }
    } else {
        for (int64_t p = a; p < b; p++) {
            const int8_t *restrict wr = w + sel[p] * ld;
            int32_t v = val[p];
            for (int64_t c = 0; c < tw; c++)
                acc32[c] += v * (int32_t)wr[c];
        }
    }
}

/* out[r, :] = sum_p val[p] * w[idx[p], :] over row r's nonzeros, int32 (the caller checked
 * K * 255 * 128 < 2**31). Rows split between threads; columns in tiles of width tile. */
typedef struct {
    const int64_t *starts, *ends;
    const int32_t *idx;
    const uint8_t *val;
    int binary;
    const int8_t *w;
    int64_t M, tile;
    int32_t *out;
    int16_t *acc16; /* per thread: tile + 1 */
} gather_args;

static void gather_body(void *ctx, int64_t r0, int64_t r1, int tid)
{
    gather_args *A = (gather_args *)ctx;
    int16_t *acc16 = A->acc16 + (size_t)tid * (size_t)(A->tile + 1);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c0 = 0; c0 < A->M; c0 += A->tile) {
            int64_t tw = A->M - c0 < A->tile ? A->M - c0 : A->tile;
            sum_rows32(A->w + c0, A->M, A->idx, A->val, A->starts[r], A->ends[r], A->binary, acc16,
                       A->out + r * A->M + c0, tw);
        }
}

int esd_gather(const int64_t *restrict starts, const int64_t *restrict ends, const int32_t *restrict idx,
               const uint8_t *restrict val, int binary, const int8_t *restrict w, int64_t R, int64_t M,
               int64_t tile, int32_t *restrict out)
{
    if (tile <= 0 || tile > M)
        tile = M;
    int nt = max_threads();
    int16_t *acc16 = (int16_t *)malloc(sizeof(int16_t) * (size_t)(tile + 1) * (size_t)nt);
    if (!acc16)
        return -1;
    gather_args A = {starts, ends, idx, val, binary, w, M, tile, out, acc16};
    parallel_for(R, 8, gather_body, &A);
    free(acc16);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* weight gradient and the fused update */

static inline uint64_t splitmix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct {
    const int64_t *ptr;
    const int32_t *smp;
    const uint8_t *sval;
    int binary;
    const int8_t *d; /* [T, N, M] */
    int64_t T, N, K, M;
    const int64_t *shifts;
    int use32;
    int64_t s_min;
} grad_args;

/* g[0:tw] = sum_t (sum_{n active at (t, k)} val * d[t, n, c0:c0+tw]) << shifts[t], int64.
 * Binary spikes: runs of consecutive steps with the same shift are summed together, in int16
 * chunks of at most CHUNK16 rows (rows are global, r = t * N + n, so a run is one contiguous
 * range of smp). use32: the caller proved that sum_t (rows at (t, k) * 128) << (shift_t - s_min)
 * < 2**31, so the chunks add up in int32 at the smallest shift s_min. */
static inline void row_grad(const grad_args *A, int64_t k, int64_t c0, int64_t tw, int64_t *restrict g,
                     int16_t *restrict acc16, int32_t *restrict acc32)
{
    const int64_t T = A->T, M = A->M;
    const int64_t *pk = A->ptr + k * T;
    const int8_t *d = A->d + c0;
    if (!A->binary) {
        for (int64_t c = 0; c < tw; c++)
            g[c] = 0;
        for (int64_t t = 0; t < T; t++) {
            int s = (int)A->shifts[t];
            for (int64_t p = pk[t]; p < pk[t + 1]; p++) {
                const int8_t *restrict dr = d + (int64_t)A->smp[p] * M;
                int64_t v = A->sval[p];
                for (int64_t c = 0; c < tw; c++)
                    g[c] += (int64_t)((uint64_t)(v * dr[c]) << s);
            }
        }
        return;
    }
    int first = 1;
    int64_t t = 0;
    while (t < T) {
        int64_t t1 = t + 1;
        while (t1 < T && A->shifts[t1] == A->shifts[t])
            t1++;
        int s = (int)A->shifts[t];
        for (int64_t a = pk[t], end = pk[t1]; a < end; a += CHUNK16) {
            int64_t b = a + CHUNK16 < end ? a + CHUNK16 : end;
            memset(acc16, 0, sizeof(int16_t) * (size_t)tw);
            sum_rows16(d, M, A->smp, a, b, acc16, tw);
            if (A->use32) {
                int rel = (int)(s - A->s_min);
                if (first)
                    for (int64_t c = 0; c < tw; c++)
                        acc32[c] = (int32_t)((uint32_t)(int32_t)acc16[c] << rel);
                else
                    for (int64_t c = 0; c < tw; c++)
                        acc32[c] += (int32_t)((uint32_t)(int32_t)acc16[c] << rel);
            } else {
                if (first)
                    for (int64_t c = 0; c < tw; c++)
                        g[c] = (int64_t)((uint64_t)(int64_t)acc16[c] << s);
                else
                    for (int64_t c = 0; c < tw; c++)
                        g[c] += (int64_t)((uint64_t)(int64_t)acc16[c] << s);
            }
            first = 0;
        }
        t = t1;
    }
    if (first) {
        for (int64_t c = 0; c < tw; c++)
            g[c] = 0;
    } else if (A->use32) {
        int s = (int)A->s_min;
        for (int64_t c = 0; c < tw; c++)
            g[c] = (int64_t)((uint64_t)(int64_t)acc32[c] << s);
    }
}

static inline int k_active(const grad_args *A, int64_t k)
{
    return A->ptr[(k + 1) * A->T] > A->ptr[k * A->T];
}

/* One row k (columns c0 : c0 + tw) of esd_dense_update; adds its saturation counts. */
static ESD_CLONES void update_row(const grad_args *A, int64_t k, int64_t c0, int64_t tw,
                                  const int16_t *restrict master, int64_t m, int64_t kbits, uint64_t key,
                                  int16_t *restrict new_master, int8_t *restrict new_w8, int64_t *restrict g,
                                  int16_t *restrict acc16, int32_t *restrict acc32, int64_t *n_sat, int64_t *n_127)
{
    const int64_t M = A->M;
    const int16_t *restrict mrow = master + k * M + c0;
    int16_t *restrict nrow = new_master + k * M + c0;
    int8_t *restrict wrow = new_w8 + k * M + c0;
    /* kbits == 0 draws no random bits: shift by 63 and mask to 0 (a shift by 64 is undefined) */
    const int rshift = kbits > 0 ? (int)(64 - kbits) : 63;
    const int64_t rmask = kbits > 0 ? -1 : 0;
    const int kb = (int)kbits;
    int64_t ls = 0, l127 = 0;
    if (k_active(A, k)) {
        row_grad(A, k, c0, tw, g, acc16, acc32);
        const uint64_t base = (uint64_t)(k * M + c0);
        for (int64_t c = 0; c < tw; c++) {
            uint64_t z = splitmix64((base + (uint64_t)c) ^ key);
            int64_t rb = (int64_t)(z >> rshift) & rmask;
            int64_t v = (int64_t)mrow[c] - ((g[c] * m + rb) >> kb);
            ls += (v > 32767) + (v < -32767);
            v = v < -32767 ? -32767 : (v > 32767 ? 32767 : v);
            nrow[c] = (int16_t)v;
            int64_t q = (v + (1 << (MASTER_BITS - 1))) >> MASTER_BITS;
            q = q < -127 ? -127 : (q > 127 ? 127 : q);
            wrow[c] = (int8_t)q;
            l127 += (q == 127) + (q == -127);
        }
    } else {
        for (int64_t c = 0; c < tw; c++) {
            int32_t v = mrow[c];
            nrow[c] = (int16_t)v;
            int32_t q = (v + (1 << (MASTER_BITS - 1))) >> MASTER_BITS;
            q = q < -127 ? -127 : (q > 127 ? 127 : q);
            wrow[c] = (int8_t)q;
            l127 += (q == 127) + (q == -127);
        }
    }
    *n_sat += ls;
    *n_127 += l127;
}

/* new_master = master - floor((grad * m + r) / 2**kbits) on rows k with any input spike,
 * r = splitmix64((k * M + c) ^ key) >> (64 - kbits) (arith.random_bits), saturating at
 * +-32767; other rows copied unchanged; new_w8 = arith.w8_from_master(new_master) on every row.
 * sat[0] = saturated master values, sat[1] = |w8| == 127 values. The caller checked that
 * grad * m + r fits int64 and 0 <= kbits <= 62. */
typedef struct {
    const grad_args *G;
    const int16_t *master;
    int64_t m, kbits;
    uint64_t key;
    int64_t tile;
    int16_t *new_master;
    int8_t *new_w8;
    int16_t *acc16; /* per thread: tile + 1 each */
    int32_t *acc32;
    int64_t *g;
    int64_t *n_sat, *n_127; /* per thread */
} update_args;

static void update_body(void *ctx, int64_t k0, int64_t k1, int tid)
{
    update_args *U = (update_args *)ctx;
    size_t off = (size_t)tid * (size_t)(U->tile + 1);
    const int64_t M = U->G->M;
    for (int64_t k = k0; k < k1; k++)
        for (int64_t c0 = 0; c0 < M; c0 += U->tile) {
            int64_t tw = M - c0 < U->tile ? M - c0 : U->tile;
            update_row(U->G, k, c0, tw, U->master, U->m, U->kbits, U->key, U->new_master, U->new_w8, U->g + off,
                       U->acc16 + off, U->acc32 + off, &U->n_sat[tid], &U->n_127[tid]);
        }
}

int esd_dense_update(const int64_t *ptr, const int32_t *smp, const uint8_t *sval, int binary, const int8_t *d,
                     int64_t T, int64_t N, int64_t K, int64_t M, const int64_t *shifts, int use32, int64_t s_min,
                     const int16_t *restrict master, int64_t m, int64_t kbits, uint64_t key, int64_t tile,
                     int16_t *restrict new_master, int8_t *restrict new_w8, int64_t *sat)
{
    grad_args A = {ptr, smp, sval, binary, d, T, N, K, M, shifts, use32, s_min};
    int64_t n_sat[ESD_MAX_THREADS] = {0}, n_127[ESD_MAX_THREADS] = {0};
    if (tile <= 0 || tile > M)
        tile = M;
    size_t each = (size_t)(tile + 1) * (size_t)max_threads();
    int16_t *acc16 = (int16_t *)malloc(sizeof(int16_t) * each);
    int32_t *acc32 = (int32_t *)malloc(sizeof(int32_t) * each);
    int64_t *g = (int64_t *)malloc(sizeof(int64_t) * each);
    int err = !acc16 || !acc32 || !g;
    if (!err) {
        update_args U = {&A, master, m, kbits, key, tile, new_master, new_w8, acc16, acc32, g, n_sat, n_127};
        parallel_for(K, 16, update_body, &U);
    }
    free(acc16);
    free(acc32);
    free(g);
    sat[0] = sat[1] = 0;
    for (int i = 0; i < ESD_MAX_THREADS; i++) {
        sat[0] += n_sat[i];
        sat[1] += n_127[i];
    }
    return err ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* neuron dynamics and local errors (arith.neuron_step_int, arith.surrogate_q, to_int8_dynamic) */

static inline int64_t sg_index(int64_t h, int64_t vth, int64_t sg_shift, int64_t half)
{
    int64_t dd = h - vth;
    int64_t i = sg_shift >= 0 ? (dd >> sg_shift) : dd * ((int64_t)1 << -sg_shift);
    i = i < -half ? -half : (i > half - 1 ? half - 1 : i);
    return i + half;
}

/* One sample's steps; called with literal flags so that every variant is specialised. */
static ALWAYS_INLINE void neuron_sample(
    const void *cur, const int cur32, int64_t T, int64_t N, int64_t M, int64_t n, const int kind,
    const int decay_input, const int soft, int64_t vth, int64_t vr, int64_t decay, const int want,
    int64_t sg_shift, int64_t half, uint8_t *restrict spikes, int64_t *restrict hs, uint8_t *restrict sgi,
    int64_t *restrict v)
{
    for (int64_t c = 0; c < M; c++)
        v[c] = vr;
    for (int64_t t = 0; t < T; t++) {
        int64_t off = (t * N + n) * M;
        const int32_t *restrict c32 = (const int32_t *)cur + off;
        const int64_t *restrict c64 = (const int64_t *)cur + off;
        uint8_t *restrict sp = spikes + off;
        for (int64_t c = 0; c < M; c++) {
            int64_t vc = v[c];
            int64_t x = cur32 ? (int64_t)c32[c] : c64[c];
            int64_t h;
            if (kind == 0) {
                if (decay_input)
                    h = vc + (((x - (vc - vr)) * decay) >> DECAY_BITS);
                else
                    h = vc - (((vc - vr) * decay) >> DECAY_BITS) + x;
            } else {
                h = vc + x;
            }
            int64_t s = h >= vth;
            v[c] = soft ? h - vth * s : (s ? vr : h);
            sp[c] = (uint8_t)s;
            if (want == 1)
                hs[off + c] = h;
            else if (want == 2)
                sgi[off + c] = (uint8_t)sg_index(h, vth, sg_shift, half);
        }
    }
}

#define NEURON_CASE(C32, KIND, DI, SOFT, WANT)                                                         \
    if (cur32 == C32 && kind == KIND && decay_input == DI && soft == SOFT && want == WANT) {           \
        neuron_sample(cur, C32, T, N, M, n, KIND, DI, SOFT, vth, vr, decay, WANT, sg_shift, half, spikes, \
                      hs, sgi, v);                                                                     \
        return;                                                                                        \
    }

/* One sample n of esd_neuron_run, dispatched to a specialised copy for the common cases. */
static ESD_CLONES void neuron_one(const void *cur, int cur32, int64_t T, int64_t N, int64_t M, int64_t n, int kind,
                                  int decay_input, int soft, int64_t vth, int64_t vr, int64_t decay, int want,
                                  int64_t sg_shift, int64_t half, uint8_t *restrict spikes, int64_t *restrict hs,
                                  uint8_t *restrict sgi, int64_t *restrict v)
{
    /* the common cases, specialised: int32 currents, LIF, hard reset */
    NEURON_CASE(1, 0, 1, 0, 2)
    NEURON_CASE(1, 0, 1, 0, 0)
    NEURON_CASE(1, 0, 1, 0, 1)
    NEURON_CASE(1, 0, 1, 1, 2)
    NEURON_CASE(1, 0, 1, 1, 0)
    NEURON_CASE(1, 0, 0, 0, 2)
    NEURON_CASE(1, 0, 0, 0, 0)
    neuron_sample(cur, cur32, T, N, M, n, kind, decay_input, soft, vth, vr, decay, want, sg_shift, half, spikes,
                  hs, sgi, v);
}

/* kind 0 = LIF, 1 = IF; v starts at vr; want: 0 nothing, 1 h into hs (int64), 2 the surrogate
 * LUT index of h - vth into sgi (uint8). cur is int32 (cur32 != 0) or int64 [T, N, M]. */
typedef struct {
    const void *cur;
    int cur32;
    int64_t T, N, M;
    int kind, decay_input, soft;
    int64_t vth, vr, decay;
    int want;
    int64_t sg_shift, half;
    uint8_t *spikes;
    int64_t *hs;
    uint8_t *sgi;
    int64_t *v; /* per thread: M + 1 */
} neuron_args;

static void neuron_body(void *ctx, int64_t n0, int64_t n1, int tid)
{
    neuron_args *A = (neuron_args *)ctx;
    int64_t *v = A->v + (size_t)tid * (size_t)(A->M + 1);
    for (int64_t n = n0; n < n1; n++)
        neuron_one(A->cur, A->cur32, A->T, A->N, A->M, n, A->kind, A->decay_input, A->soft, A->vth, A->vr, A->decay,
                   A->want, A->sg_shift, A->half, A->spikes, A->hs, A->sgi, v);
}

int esd_neuron_run(const void *cur, int cur32, int64_t T, int64_t N, int64_t M, int kind, int decay_input,
                   int soft, int64_t vth, int64_t vr, int64_t decay, int want, int64_t sg_shift, int64_t half,
                   uint8_t *restrict spikes, int64_t *restrict hs, uint8_t *restrict sgi)
{
    int64_t *v = (int64_t *)malloc(sizeof(int64_t) * (size_t)(M + 1) * (size_t)max_threads());
    if (!v)
        return -1;
    neuron_args A = {cur, cur32 != 0, T, N, M, kind, kind != 0 ? 0 : decay_input != 0, soft != 0, vth, vr, decay,
                     want, sg_shift, half, spikes, hs, sgi, v};
    parallel_for(N, 4, neuron_body, &A);
    free(v);
    return 0;
}

/* Step t of esd_local_deltas. */
static ESD_CLONES void deltas_step(int64_t t, const void *h, int from_index, const void *e, int e32, int64_t Te,
                                   int64_t C, const void *b, int64_t N, int64_t M, int64_t vth, int64_t sg_shift,
                                   const int32_t *restrict lut32, int64_t half, int8_t *restrict deltas,
                                   int64_t *restrict shifts, int64_t *restrict raw, int64_t *restrict gr,
                                   int32_t *restrict gr32, int32_t *restrict li)
{
    int64_t et = (Te > 1 ? t : 0) * N * C;
    int64_t mx = 0;
    for (int64_t n = 0; n < N; n++) {
        int64_t off = (t * N + n) * M;
        int64_t *restrict rn = raw + n * M;
        /* the LUT values of this row */
        if (from_index) {
            const uint8_t *hi = (const uint8_t *)h + off;
            for (int64_t c = 0; c < M; c++)
                li[c] = lut32[hi[c]];
        } else {
            const int64_t *hh = (const int64_t *)h + off;
            for (int64_t c = 0; c < M; c++)
                li[c] = lut32[sg_index(hh[c], vth, sg_shift, half)];
        }
        if (e32) {
            const int32_t *restrict en = (const int32_t *)e + et + n * C;
            const int32_t *restrict g;
            if (b) {
                for (int64_t c = 0; c < M; c++)
                    gr32[c] = 0;
                for (int64_t j = 0; j < C; j++) {
                    int32_t ej = en[j];
                    const int32_t *restrict bj = (const int32_t *)b + j * M;
                    for (int64_t c = 0; c < M; c++)
                        gr32[c] += ej * bj[c];
                }
                g = gr32;
            } else {
                g = en; /* C == M */
            }
            for (int64_t c = 0; c < M; c++) {
                int64_t r = (int64_t)g[c] * (int64_t)li[c];
                rn[c] = r;
                int64_t a = r < 0 ? -r : r;
                mx = a > mx ? a : mx;
            }
        } else {
            const int64_t *restrict en = (const int64_t *)e + et + n * C;
            const int64_t *restrict g;
            if (b) {
                for (int64_t c = 0; c < M; c++)
                    gr[c] = 0;
                for (int64_t j = 0; j < C; j++) {
                    int64_t ej = en[j];
                    const int64_t *restrict bj = (const int64_t *)b + j * M;
                    for (int64_t c = 0; c < M; c++)
                        gr[c] += ej * bj[c];
                }
                g = gr;
            } else {
                g = en; /* C == M */
            }
            for (int64_t c = 0; c < M; c++) {
                int64_t r = g[c] * (int64_t)li[c];
                rn[c] = r;
                int64_t a = r < 0 ? -r : r;
                mx = a > mx ? a : mx;
            }
        }
    }
    int bits = 0;
    while (bits < 63 && (mx >> bits) > 0)
        bits++;
    int sh = bits - DELTA_BITS > 0 ? bits - DELTA_BITS : 0;
    shifts[t] = sh;
    int8_t *dt = deltas + t * N * M;
    if (sh == 0) {
        for (int64_t i = 0; i < N * M; i++)
            dt[i] = (int8_t)raw[i];
    } else {
        int64_t rnd = (int64_t)1 << (sh - 1);
        for (int64_t i = 0; i < N * M; i++) {
            int64_t q = (raw[i] + rnd) >> sh;
            dt[i] = (int8_t)(q < -127 ? -127 : (q > 127 ? 127 : q));
        }
    }
}

/* delta_t = to_int8_dynamic(g_t * lut[index(h_t)]) per step t, g = e @ b (b != NULL) or g = e.
 * e is [Te, N, C] with Te = T or 1 (the same error at every step); e and b are int32 (e32: the
 * caller proved C * max|e| * max|b| < 2**31, so the projection is exact in int32 and the
 * products with the LUT use 32x32->64 multiplies) or int64. h is the uint8 LUT index
 * (from_index) or the int64 membrane. The caller checked that no product can wrap. */
typedef struct {
    const void *h;
    int from_index;
    const void *e;
    int e32;
    int64_t Te, C;
    const void *b;
    int64_t N, M, vth, sg_shift;
    const int32_t *lut32;
    int64_t half;
    int8_t *deltas;
    int64_t *shifts;
    int64_t *raw, *gr; /* per thread: N * M + 1, M + 1 */
    int32_t *gr32, *li; /* per thread: M + 1 */
} deltas_args;

static void deltas_body(void *ctx, int64_t t0, int64_t t1, int tid)
{
    deltas_args *A = (deltas_args *)ctx;
    size_t big = (size_t)tid * (size_t)(A->N * A->M + 1), small = (size_t)tid * (size_t)(A->M + 1);
    for (int64_t t = t0; t < t1; t++)
        deltas_step(t, A->h, A->from_index, A->e, A->e32, A->Te, A->C, A->b, A->N, A->M, A->vth, A->sg_shift,
                    A->lut32, A->half, A->deltas, A->shifts, A->raw + big, A->gr + small, A->gr32 + small,
                    A->li + small);
}

int esd_local_deltas(const void *h, int from_index, const void *e, int e32, int64_t Te, int64_t C,
                     const void *b, int64_t T, int64_t N, int64_t M, int64_t vth, int64_t sg_shift,
                     const int64_t *restrict lut, int64_t half, int8_t *restrict deltas, int64_t *restrict shifts)
{
    int32_t lut32[256];
    for (int64_t i = 0; i < 2 * half && i < 256; i++)
        lut32[i] = (int32_t)lut[i];
    size_t nt = (size_t)max_threads(); /* any thread may take any step */
    int64_t *raw = (int64_t *)malloc(sizeof(int64_t) * (size_t)(N * M + 1) * nt);
    int64_t *gr = (int64_t *)malloc(sizeof(int64_t) * (size_t)(M + 1) * nt);
    int32_t *gr32 = (int32_t *)malloc(sizeof(int32_t) * (size_t)(M + 1) * nt);
    int32_t *li = (int32_t *)malloc(sizeof(int32_t) * (size_t)(M + 1) * nt);
    int err = !raw || !gr || !gr32 || !li;
    if (!err) {
        deltas_args A = {h, from_index, e, e32, Te, C, b, N, M, vth, sg_shift, lut32, half, deltas, shifts,
                         raw, gr, gr32, li};
        parallel_for(T, 1, deltas_body, &A);
    }
    free(raw);
    free(gr);
    free(gr32);
    free(li);
    return err ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* the exact rule's local errors (arith.exact_eligibility, arith.exact_deltas) */

#define ELIG_BITS 12
#define SG_BITS 8
#define CARRY_BITS 12
#define ELIG_LIMIT (((int64_t)1 << 40) - 1)

/* One sample's eligibility recurrence c_t = SG[i_t] << 4 + round(c_{t+1} * carry[i_t] / 2**12),
 * backwards over t: exact_max records max_t |g * c_t| in mx, exact_write writes the int8 deltas
 * with the per-step shifts. Branch-free inner loops, compiled per CPU family. */
static ESD_CLONES void exact_max(const uint8_t *restrict idx, const int64_t *restrict g, int64_t T, int64_t N,
                                 int64_t M, int64_t n, const int32_t *restrict sg16, const int32_t *restrict carry,
                                 int64_t *restrict c, int64_t *restrict mx)
{
    const int64_t *restrict gn = g + n * M;
    for (int64_t m = 0; m < M; m++)
        c[m] = 0;
    for (int64_t t = T - 1; t >= 0; t--) {
        const uint8_t *restrict it = idx + (t * N + n) * M;
        int64_t best = 0;
        for (int64_t m = 0; m < M; m++) {
            int64_t i = it[m];
            int64_t v = (int64_t)sg16[i] + ((c[m] * (int64_t)carry[i] + ((int64_t)1 << (CARRY_BITS - 1))) >> CARRY_BITS);
            v = v > ELIG_LIMIT ? ELIG_LIMIT : (v < -ELIG_LIMIT ? -ELIG_LIMIT : v);
            c[m] = v;
            int64_t r = gn[m] * v;
            int64_t a = r < 0 ? -r : r;
            best = a > best ? a : best;
        }
        if (best > mx[t])
            mx[t] = best;
    }
}

static ESD_CLONES void exact_write(const uint8_t *restrict idx, const int64_t *restrict g, int64_t T, int64_t N,
                                   int64_t M, int64_t n, const int32_t *restrict sg16, const int32_t *restrict carry,
                                   int64_t *restrict c, const int64_t *restrict shifts, int8_t *restrict deltas)
{
    const int64_t *restrict gn = g + n * M;
    for (int64_t m = 0; m < M; m++)
        c[m] = 0;
    for (int64_t t = T - 1; t >= 0; t--) {
        int64_t off = (t * N + n) * M;
        const uint8_t *restrict it = idx + off;
        int8_t *restrict dt = deltas + off;
        int64_t sh = shifts[t];
        int64_t rnd = sh > 0 ? ((int64_t)1 << (sh - 1)) : 0; /* sh == 0: |r| <= 127, r + 0 >> 0 == r */
        for (int64_t m = 0; m < M; m++) {
            int64_t i = it[m];
            int64_t v = (int64_t)sg16[i] + ((c[m] * (int64_t)carry[i] + ((int64_t)1 << (CARRY_BITS - 1))) >> CARRY_BITS);
            v = v > ELIG_LIMIT ? ELIG_LIMIT : (v < -ELIG_LIMIT ? -ELIG_LIMIT : v);
            c[m] = v;
            int64_t q = (gn[m] * v + rnd) >> sh;
            dt[m] = (int8_t)(q < -127 ? -127 : (q > 127 ? 127 : q));
        }
    }
}

/* idx [T, N, M] surrogate bins (uint8), g [N, M] int64 with |g| <= 2**22 (checked by the
 * caller), sg_lut / carry: 2 * half int64 tables. Writes deltas [T, N, M] and shifts [T]. */
int esd_exact_deltas(const uint8_t *restrict idx, const int64_t *restrict g, int64_t T, int64_t N, int64_t M,
                     const int64_t *restrict sg_lut, const int64_t *restrict carry_lut, int64_t half,
                     int8_t *restrict deltas, int64_t *restrict shifts)
{
    int err = 0;
    int32_t sg16[256], carry[256];
    for (int64_t i = 0; i < 256; i++) {
        sg16[i] = i < 2 * half ? (int32_t)(sg_lut[i] << (ELIG_BITS - SG_BITS)) : 0;
        carry[i] = i < 2 * half ? (int32_t)carry_lut[i] : 0;
    }
    int64_t *mx = (int64_t *)calloc((size_t)(T + 1), sizeof(int64_t));
    if (!mx)
        return -1;
    for (int pass = 0; pass < 2; pass++) {
#ifdef _OPENMP
#pragma omp parallel reduction(| : err)
#endif
        {
            int64_t *c = (int64_t *)malloc(sizeof(int64_t) * (size_t)(M + 1));
            int64_t *mxl = (int64_t *)calloc((size_t)(T + 1), sizeof(int64_t));
            if (!c || !mxl) {
                err = 1;
            } else {
                int64_t n;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
                for (n = 0; n < N; n++) {
                    if (pass == 0)
                        exact_max(idx, g, T, N, M, n, sg16, carry, c, mxl);
                    else
                        exact_write(idx, g, T, N, M, n, sg16, carry, c, shifts, deltas);
                }
                if (pass == 0) {
#ifdef _OPENMP
#pragma omp critical
#endif
                    for (int64_t t = 0; t < T; t++)
                        mx[t] = mxl[t] > mx[t] ? mxl[t] : mx[t];
                }
            }
            free(c);
            free(mxl);
        }
        if (err)
            break;
        if (pass == 0) {
            for (int64_t t = 0; t < T; t++) {
                int bits = 0;
                while (bits < 63 && (mx[t] >> bits) > 0)
                    bits++;
                shifts[t] = bits - DELTA_BITS > 0 ? bits - DELTA_BITS : 0;
            }
        }
    }
    free(mx);
    return err ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* the machine's int16 SIMD peak (benchmarks/step.py: the distance to the compute floor) */

#define PEAK_LANES 192

/* Register-resident int16 multiply-adds, 192 lanes in independent chains (12 AVX2 / 6 AVX-512 /
 * 24 NEON registers, enough to cover the multiply latency), 2 ops per lane per iteration, with
 * two broadcast constants. Compiled for each CPU family as the kernels. */
ESD_CLONES
void esd_int16_peak_one(int64_t iters, int16_t *restrict acc)
{
    int16_t a[PEAK_LANES];
    const int16_t mul = (int16_t)(acc[0] | 3), add = (int16_t)(acc[1] | 1);
    for (int j = 0; j < PEAK_LANES; j++)
        a[j] = acc[j];
    for (int64_t it = 0; it < iters; it++)
        for (int j = 0; j < PEAK_LANES; j++)
            a[j] = (int16_t)(a[j] * mul + add);
    for (int j = 0; j < PEAK_LANES; j++)
        acc[j] = a[j];
}

/* Every OpenMP thread runs esd_int16_peak_one(iters); returns the integer ops done. */
int64_t esd_int16_peak(int64_t iters, int16_t *restrict out)
{
    int64_t threads = 1;
#ifdef _OPENMP
#pragma omp parallel
    {
#pragma omp single
        threads = omp_get_num_threads();
        int16_t acc[PEAK_LANES];
        for (int j = 0; j < PEAK_LANES; j++)
            acc[j] = (int16_t)(j + 3);
        esd_int16_peak_one(iters, acc);
#pragma omp critical
        for (int j = 0; j < PEAK_LANES; j++)
            out[j] = (int16_t)(out[j] + acc[j]);
    }
#else
    int16_t acc[PEAK_LANES];
    for (int j = 0; j < PEAK_LANES; j++)
        acc[j] = (int16_t)(j + 3);
    esd_int16_peak_one(iters, acc);
    for (int j = 0; j < PEAK_LANES; j++)
        out[j] = (int16_t)(out[j] + acc[j]);
#endif
    return threads * iters * PEAK_LANES * 2;
}

/* ------------------------------------------------------------------------------------------ */
/* a whole stack of dense spiking layers in one call (inference: nothing recorded)
 *
 * x: uint8 [T, N, K0]; per layer l: w[l] int8 [K_l, M_l] (K_0 = K0, K_{l+1} = M_l), bias[l]
 * int32 [M_l] or NULL, and 7 int64 parameters p[7 l ..]: M, kind, decay_input, soft, vth, vr,
 * decay. Each layer is exactly prepare_inputs + esd_gather (+ int32 bias) + esd_neuron_run
 * (want 0) of c_kernels.py, so the spikes are the same. The caller proved K_l * 255 * 128 < 2**30;
 * the biases are checked here on every call (|b| < 2**30: int32 currents are exact), since an
 * array can be edited in place. out: uint8 [T, N, M_last]. Returns 0, 1 when a bias is out of
 * bounds (nothing computed: run the layers one by one), or -1 when out of memory. */
int esd_dense_stack(const uint8_t *x, int64_t T, int64_t N, int64_t K0, int64_t L, const int8_t *const *w,
                    const int32_t *const *bias, const int64_t *p, int64_t sg_shift, int64_t half, uint8_t *out)
{
    const int64_t R = T * N;
    int64_t mmax = K0;
    for (int64_t l = 0; l < L; l++) {
        mmax = p[7 * l] > mmax ? p[7 * l] : mmax;
        for (int64_t c = 0; bias[l] && c < p[7 * l]; c++)
            if (bias[l][c] >= (1 << 30) || bias[l][c] <= -(1 << 30))
                return 1;
    }
    int64_t *counts = (int64_t *)malloc(sizeof(int64_t) * (size_t)(3 * R + 1));
    int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (size_t)(R * (mmax + 1) + 1));
    uint8_t *val = (uint8_t *)malloc((size_t)(R * (mmax + 1) + 1));
    int32_t *cur = (int32_t *)malloc(sizeof(int32_t) * (size_t)(R * mmax + 1));
    uint8_t *sp[2] = {(uint8_t *)malloc((size_t)(R * mmax + 1)), (uint8_t *)malloc((size_t)(R * mmax + 1))};
    int rc = (counts && idx && val && cur && sp[0] && sp[1]) ? 0 : -1;
    const uint8_t *in = x;
    int64_t K = K0;
    for (int64_t l = 0; l < L && rc == 0; l++) {
        const int64_t *q = p + 7 * l;
        const int64_t M = q[0];
        int64_t *starts = counts + R, *ends = counts + 2 * R;
        int64_t vmax = esd_row_counts(in, R, K, counts);
        int binary = vmax <= 1;
        int64_t s = 0;
        for (int64_t r = 0; r < R; r++) {
            starts[r] = s;
            ends[r] = s + counts[r];
            s += counts[r] + 1;
        }
        esd_csr_fill(in, R, K, starts, idx, val, binary);
        rc = esd_gather(starts, ends, idx, val, binary, w[l], R, M, 0, cur);
        if (rc != 0)
            break;
        if (bias[l]) {
            const int32_t *b = bias[l];
            for (int64_t r = 0; r < R; r++)
                for (int64_t c = 0; c < M; c++)
                    cur[r * M + c] += b[c];
        }
        uint8_t *o = l == L - 1 ? out : sp[l & 1];
        int64_t hs = 0;
        uint8_t sgi = 0;
        rc = esd_neuron_run(cur, 1, T, N, M, (int)q[1], (int)q[2], (int)q[3], q[4], q[5], q[6], 0, sg_shift, half,
                            o, &hs, &sgi);
        in = o;
        K = M;
    }
    free(counts);
    free(idx);
    free(val);
    free(cur);
    free(sp[0]);
    free(sp[1]);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* conv currents by scattering the input spikes (forward of a conv layer, nothing recorded)
 *
 * x: uint8 [R, C, H, W] (spikes or counts); wt: int8 [C, k, k, O] (the weight transposed so that
 * one input pixel's contribution to one output pixel is a contiguous row of O); out: int32
 * [R, OH, OW, O], channels last. out[r, oy, ox, o] = sum over c, ky, kx of
 * x[r, c, oy*s + ky - p, ox*s + kx - p] * w[o, c, ky, kx] (zero outside the input): the same
 * integer sum as im2col + dense_current, so exact; the caller proved C * k * k * 255 * 128 < 2**31.
 * Each input spike adds its k * k weight rows, so the work follows the spikes, not the pixels. */
typedef struct {
    const uint8_t *x;
    const int8_t *wt;
    int64_t C, H, W, O, k, s, p, OH, OW;
    int32_t *out;
} conv_args;

static ALWAYS_INLINE void conv_add(int32_t *restrict acc, const int8_t *restrict wrow, int32_t v, int64_t O)
{
    if (v == 1 && (O & 15) == 0) /* whole blocks of 16: one vector each, no remainder loop */
        for (int64_t o0 = 0; o0 < O; o0 += 16)
            for (int o = 0; o < 16; o++)
                acc[o0 + o] += wrow[o0 + o];
    else if (v == 1)
        for (int64_t o = 0; o < O; o++)
            acc[o] += wrow[o];
    else
        for (int64_t o = 0; o < O; o++)
            acc[o] += v * (int32_t)wrow[o];
}

/* An input at y reaches output oy through tap ky when y + p - ky = oy * s; for stride 1 the taps
 * that land inside the output are one contiguous range, so the inner loops carry no division. */
static ESD_CLONES void conv_row(const conv_args *A, int64_t r)
{
    const int64_t C = A->C, H = A->H, W = A->W, O = A->O, k = A->k, s = A->s, p = A->p, OH = A->OH, OW = A->OW;
    int32_t *restrict out = A->out + r * OH * OW * O;
    memset(out, 0, sizeof(int32_t) * (size_t)(OH * OW * O));
    const uint8_t *restrict xr = A->x + r * C * H * W;
    /* input lines outermost: the spikes of line y write output lines y + p - k + 1 .. y + p only,
     * which stay in L1 while every channel of that line is scattered */
    for (int64_t y = 0; y < H; y++) {
        int64_t ky0 = 0, ky1 = -1;   /* taps ky0..ky1 (stride 1) */
        if (s == 1) {
            ky0 = y + p - (OH - 1) > 0 ? y + p - (OH - 1) : 0;
            ky1 = y + p < k - 1 ? y + p : k - 1;
        }
        for (int64_t c = 0; c < C; c++) {
            const uint8_t *restrict line = xr + (c * H + y) * W;
            for (int64_t xx = 0; xx < W; xx++) {
                const int32_t v = line[xx];
                if (!v)
                    continue;
                const int8_t *restrict wc = A->wt + c * k * k * O;
                if (s == 1) {
                    const int64_t kx0 = xx + p - (OW - 1) > 0 ? xx + p - (OW - 1) : 0;
                    const int64_t kx1 = xx + p < k - 1 ? xx + p : k - 1;
                    for (int64_t ky = ky0; ky <= ky1; ky++) {
                        int32_t *restrict row = out + (y + p - ky) * OW * O;
                        for (int64_t kx = kx0; kx <= kx1; kx++)
                            conv_add(row + (xx + p - kx) * O, wc + (ky * k + kx) * O, v, O);
                    }
                    continue;
                }
                for (int64_t ky = 0; ky < k; ky++) {
                    const int64_t ny = y + p - ky;
                    if (ny < 0 || ny % s || ny / s >= OH)
                        continue;
                    for (int64_t kx = 0; kx < k; kx++) {
                        const int64_t nx = xx + p - kx;
                        if (nx < 0 || nx % s || nx / s >= OW)
                            continue;
                        conv_add(out + ((ny / s) * OW + nx / s) * O, wc + (ky * k + kx) * O, v, O);
                    }
                }
            }
        }
    }
}

static void conv_body(void *ctx, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    for (int64_t r = r0; r < r1; r++)
        conv_row((const conv_args *)ctx, r);
}

int esd_conv_current(const uint8_t *x, int64_t R, int64_t C, int64_t H, int64_t W, const int8_t *wt, int64_t O,
                     int64_t k, int64_t s, int64_t p, int64_t OH, int64_t OW, int32_t *out)
{
    if (k <= 0 || s <= 0 || p < 0 || OH <= 0 || OW <= 0)
        return -2;
    conv_args A = {x, wt, C, H, W, O, k, s, p, OH, OW, out};
    parallel_for(R, 1, conv_body, &A);
    return 0;
}
