# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Greedy solver for the asymmetric multiway cut (AMWC), private kernel.

The public API, argument checks and docstrings live in :mod:`copsctl.solver`; this
kernel trusts its inputs (see ``solve`` for the preconditions) and runs without the GIL.

Objective (problem (2) of the COPS paper), with edge costs paid when an edge is cut::

    sum_i c_V(i, x_i) + sum_{ij} c_E(ij) [i and j in different clusters]

Phases
------
0. Pre-clustering into superpixels along the local edges with cost above a threshold,
   in descending order of cost (counting sort, union-find), up to a size bound (a
   smaller one for partitionable classes, whose weak boundaries between touching
   instances of one class a superpixel must not cross). Default rule (``pre_margin``
   >= 0): both endpoints prefer the same class, each by at least the margin. Such a
   merge is one GAEC makes anyway (gain >= edge cost), and the nodes of a superpixel
   share their preferred class, so the superpixels' cost rows are summed once
   afterwards, in one pass over the node costs. Earlier rule (``pre_margin`` < 0): any
   two superpixels whose merge gains, with cost rows summed merge by merge.
1. Region adjacency graph of the superpixels: parallel edges are summed.
2. GAEC on that graph. A cluster carries the sum of its nodes' class costs and takes
   the cheapest class. The gain of merging clusters ``a`` and ``b`` is
   ``S(a, b) - min_k (C_a[k] + C_b[k]) + w_ab``, where ``S`` is the cheapest *feasible*
   way to keep them apart: if both prefer the same non-partitionable class, one of them
   must take its second-best class, since adjacent clusters of such a class are one
   cluster. For clusters of different classes the gain is at most ``w_ab``, so a pair
   with ``w_ab <= 0`` is dismissed without scanning the K classes. Gains are kept in a
   max-heap with lazy re-evaluation: a popped entry whose gain has dropped is pushed
   back with its exact value, and a final sweep re-checks every remaining edge so that
   no merge with positive gain is left.
3. Improvement, in units of decreasing size; every move strictly lowers the objective.
   A unit moves to a neighbouring cluster (taking its class) or to a new cluster of any
   class; units next to a moved one are re-examined. Units: whole superpixels (with
   their summed rows and adjacency), then single nodes, then the pieces that the node
   moves cut the superpixels into (connected within one cluster), then nodes again (only
   those whose surroundings the pieces changed). A unit's cheapest class outside the
   neighbouring clusters comes from its shortlist of cheapest classes (``TopClasses``),
   all K are scanned only when none of the shortlist may be taken.
   Last, Kernighan-Lin moves across the boundary of every two clusters that touch along
   a local edge (sequences of node moves between the two, uphill steps allowed, cut
   back to their best prefix) and from a cluster to a class that some of its nodes
   prefer and no cluster next to them holds; then moves of whole small segments
   (connected parts of one cluster) to another cluster or class; then the instances of
   each thing class, touching ones together, partitioned anew by GAEC on their nodes
   where that cuts less; then swaps between every two touching clusters by a minimum
   cut on the nodes near their boundary; then nodes again where they moved.
4. Output. Non-partitionable classes form one cluster each; segments are the connected
   components of the uncut edges, numbered by first appearance.

Each phase is one function over buffers owned by ``std::vector`` (``_solve_core`` only
sequences them), so an allocation failure anywhere frees everything and surfaces as
``MemoryError``.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.math cimport INFINITY
from libcpp.vector cimport vector
from libcpp.utility cimport pair
from libcpp.algorithm cimport sort
from posix.time cimport clock_gettime, timespec, CLOCK_THREAD_CPUTIME_ID

ctypedef pair[int32_t, int32_t] IntPair
ctypedef pair[double, IntPair] HeapEntry


cdef extern from * nogil:
    """
    #include <cstdint>
    #include <memory>
    #include <utility>
    #include <vector>
    // The adjacency of one cluster in the contraction: neighbour id -> summed edge cost.
    // Open addressing with linear probing in two parallel arrays (key -1: empty slot,
    // -2: erased), capacity a power of two, at most 7/10 of the slots used; every
    // allocation throws std::bad_alloc, which Cython turns into MemoryError.
    struct AdjMap {
        std::vector<int32_t> keys;
        std::vector<double> vals;
        size_t live = 0, used = 0;  // entries; entries + erased slots
        size_t size() const { return live; }
        size_t capacity() const { return keys.size(); }
        static size_t home(int32_t k, size_t mask) {
            // multiplicative hash, high half folded in: the low bits depend on all of k
            uint32_t h = (uint32_t)k * 2654435769u;
            return (size_t)(h ^ (h >> 16)) & mask;
        }
        int64_t find(int32_t k) const {
            if (keys.empty()) return -1;
            size_t mask = keys.size() - 1, i = home(k, mask);
            while (keys[i] != -1) {
                if (keys[i] == k) return (int64_t)i;
                i = (i + 1) & mask;
            }
            return -1;
        }
        void rehash(size_t cap) {
            std::vector<int32_t> ok(cap, -1);
            std::vector<double> ov(cap, 0.0);
            ok.swap(keys); ov.swap(vals);
            size_t mask = cap - 1;
            for (size_t j = 0; j < ok.size(); ++j) {
                if (ok[j] < 0) continue;
                size_t i = home(ok[j], mask);
                while (keys[i] != -1) i = (i + 1) & mask;
                keys[i] = ok[j]; vals[i] = ov[j];
            }
            used = live;
        }
        void reserve(size_t n) {
            size_t cap = 8;
            while (cap * 7 < (n + 1) * 10) cap <<= 1;
            if (cap > keys.size()) rehash(cap);
        }
        // the value of key k, inserted as 0.0 if absent; valid until the next insertion
        double* slot(int32_t k) {
            int64_t f = find(k);
            if (f >= 0) return &vals[(size_t)f];
            if ((used + 1) * 10 > keys.size() * 7) {
                size_t cap = 8;
                while (cap * 7 < (live + 1) * 20) cap <<= 1;  // room to grow to twice
                rehash(cap);
            }
            size_t mask = keys.size() - 1, i = home(k, mask);
            while (keys[i] >= 0) i = (i + 1) & mask;   // first erased or empty slot
            if (keys[i] == -1) ++used;
            keys[i] = k; vals[i] = 0.0; ++live;
            return &vals[i];
        }
        void erase(int32_t k) {
            int64_t f = find(k);
            if (f >= 0) { keys[(size_t)f] = -2; --live; }
        }
        void release() {
            std::vector<int32_t>().swap(keys); std::vector<double>().swap(vals);
            live = used = 0;
        }
    };
    // An allocator whose resize leaves new elements of plain types uninitialised, for
    // buffers that are written in full before they are read: zeroing tens of MB first
    // would cost as much as filling them.
    template <class T> struct RawAlloc : std::allocator<T> {
        template <class U> struct rebind { typedef RawAlloc<U> other; };
        RawAlloc() = default;
        template <class U> RawAlloc(const RawAlloc<U>&) noexcept {}
        template <class U> void construct(U* p) noexcept { ::new ((void*)p) U; }
        template <class U, class... A> void construct(U* p, A&&... a) {
            ::new ((void*)p) U(std::forward<A>(a)...);
        }
    };

    // A max-heap of (priority, (a, b)) entries with four children per node: half the
    // levels of a binary heap, so a pop (the common operation) moves fewer entries. Its
    // order is std::pair's, a total order on distinct entries, so the entries come out
    // in the same sequence as from std::push_heap / pop_heap.
    typedef std::pair<double, std::pair<int32_t, int32_t>> Heap4Entry;
    static inline void heap4_up(std::vector<Heap4Entry>& h, size_t i) {
        Heap4Entry e = h[i];
        while (i > 0) {
            size_t p = (i - 1) >> 2;
            if (!(h[p] < e)) break;
            h[i] = h[p]; i = p;
        }
        h[i] = e;
    }
    static inline void heap4_down(std::vector<Heap4Entry>& h, size_t i) {
        size_t n = h.size();
        Heap4Entry e = h[i];
        for (;;) {
            size_t c = 4 * i + 1;
            if (c >= n) break;
            size_t m = c, end = c + 4 < n ? c + 4 : n;
            for (size_t j = c + 1; j < end; ++j)
                if (h[m] < h[j]) m = j;
            if (!(e < h[m])) break;
            h[i] = h[m]; i = m;
        }
        h[i] = e;
    }
    static inline void heap4_push(std::vector<Heap4Entry>& h, const Heap4Entry& e) {
        h.push_back(e);
        heap4_up(h, h.size() - 1);
    }
    static inline void heap4_pop(std::vector<Heap4Entry>& h) {
        // drop the top entry (read it from h[0] first)
        h[0] = h.back();
        h.pop_back();
        if (h.size() > 1) heap4_down(h, 0);
    }
    static inline void heap4_make(std::vector<Heap4Entry>& h) {
        if (h.size() < 2) return;
        for (size_t i = (h.size() - 2) / 4 + 1; i-- > 0;) heap4_down(h, i);
    }
    """
    cdef cppclass AdjMap:
        vector[int32_t] keys
        vector[double] vals
        size_t size()
        size_t capacity()
        int64_t find(int32_t)
        void reserve(size_t) except +
        double* slot(int32_t) except +
        void erase(int32_t)
        void release()
    cdef cppclass RawAlloc[T]:
        pass
    void heap4_push(vector[HeapEntry]&, const HeapEntry&) except +
    void heap4_pop(vector[HeapEntry]&)
    void heap4_make(vector[HeapEntry]&)


cdef double GAIN_EPS = 1e-9
# residual capacities at most this are saturated (the swaps' cuts); a swap's tie keeps
# the current side by SWAP_BIAS, above it
cdef double FLOW_EPS = 1e-12
cdef double SWAP_BIAS = 1e-10
# the swaps stop taking pairs once their bands hold SWAP_SHARE * N nodes in all
cdef int SWAP_SHARE = 8

cdef enum:
    # the short Kernighan-Lin sequences from single boundary nodes (``_boundary_moves``)
    LOCAL_MOVES = 64
    LOCAL_PATIENCE = 8
    # the instance splits take part of at most N / SPLIT_SHARE nodes (``_instance_splits``)
    SPLIT_SHARE = 4
    # the edge list is bucketed in chunks of this many edges (``_node_graph``)
    NODE_GRAPH_CHUNK = 1 << 30


cdef inline double _now() noexcept nogil:
    # thread CPU time: phase timings stay meaningful when other processes share the cores
    cdef timespec ts
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline int32_t _find(int32_t* parent, int32_t x) noexcept nogil:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


cdef struct Stats:
    double t_precluster
    double t_rag
    double t_gaec
    double t_improve
    double t_output
    int64_t superpixels
    int64_t clusters_after_gaec
    int64_t merges
    int64_t heap_pops
    int64_t improve_moves
    int64_t improve_visits
    int64_t boundary_moves
    double t_boundary
    int64_t segment_moves
    int64_t split_moves
    int64_t split_candidates
    int64_t split_nodes
    double t_segments
    double t_splits
    double objective_before_improve
    int64_t swap_moves
    int64_t swap_nodes
    int64_t swap_band_nodes
    double t_swaps


cdef inline void _update_best(double* row, int32_t K, double* best, double* second,
                              int32_t* argbest) noexcept nogil:
    cdef double b = INFINITY, s = INFINITY, v
    cdef int32_t k, a = 0
    for k in range(K):
        v = row[k]
        if v < b:
            s = b; b = v; a = k
        elif v < s:
            s = v
    best[0] = b; second[0] = s; argbest[0] = a


cdef inline double _min_sum(const double* ra, const double* rb, int32_t K) noexcept nogil:
    """min over k of ra[k] + rb[k], in four running minima: one minimum waits on the
    compare before it, four keep four in flight (the same minimum: the costs are finite)."""
    cdef double m0 = INFINITY, m1 = INFINITY, m2 = INFINITY, m3 = INFINITY, v
    cdef int32_t k = 0
    while k + 4 <= K:
        v = ra[k] + rb[k]
        if v < m0:
            m0 = v
        v = ra[k + 1] + rb[k + 1]
        if v < m1:
            m1 = v
        v = ra[k + 2] + rb[k + 2]
        if v < m2:
            m2 = v
        v = ra[k + 3] + rb[k + 3]
        if v < m3:
            m3 = v
        k += 4
    while k < K:
        v = ra[k] + rb[k]
        if v < m0:
            m0 = v
        k += 1
    if m1 < m0:
        m0 = m1
    if m3 < m2:
        m2 = m3
    return m2 if m2 < m0 else m0


cdef inline double _gain(double* costs, double* best, double* second, int32_t* argbest,
                         const uint8_t* part, int32_t K, int32_t a, int32_t b,
                         double w) noexcept nogil:
    """Objective decrease of merging clusters a and b joined by total edge cost w."""
    cdef int32_t ka = argbest[a], kb = argbest[b]
    cdef double sep, merged, v
    if ka == kb:
        # Same preferred class: merged cost is best[a] + best[b].
        if part[ka]:
            return w
        # Kept apart, one of them must leave the shared non-partitionable class.
        sep = best[a] + second[b]
        v = second[a] + best[b]
        if v < sep:
            sep = v
        return sep - best[a] - best[b] + w
    if w <= GAIN_EPS:
        # The merged cost is at least best[a] + best[b], so the gain is at most w: not
        # positive, whatever the exact value (callers only act on positive gains).
        return w
    merged = _min_sum(costs + <int64_t>a * K, costs + <int64_t>b * K, K)
    return best[a] + best[b] - merged + w


cdef inline double _order(const int32_t* argbest, const uint8_t* part, int32_t a, int32_t b,
                          double w, double g, bint edge_order) noexcept nogil:
    """Heap key of the merge of a and b (edge cost w, gain g > 0).

    The gain, except with ``edge_order`` for two clusters that prefer one
    non-partitionable class: their gain is w plus the cheaper way to keep them apart,
    which grows with their summed class margins, so big superpixels of one stuff class
    would merge before any others. Across a region whose noisy pixels prefer another
    class, their superpixels would so join that class's cluster through long-range
    edges first, and the region would end in the wrong class; keyed by w, such merges
    come in the order of their edges, as between single pixels. Every merge still
    has a positive gain. Where no local edge was contracted (every unit one node) the
    order is the gain's, as in plain GAEC.
    """
    if edge_order and argbest[a] == argbest[b] and not part[argbest[a]] and w < g:
        return w
    return g


cdef inline bint _gain_positive(double* costs, double* best, double* second, int32_t* argbest,
                               const uint8_t* part, int32_t K, int32_t a, int32_t b,
                               double w) noexcept nogil:
    """Whether merging a and b lowers the objective; O(1) when a cheap bound decides."""
    cdef int32_t ka = argbest[a], kb = argbest[b]
    cdef double lower, v
    if ka != kb:
        # merged cost <= either cluster's best class for both, so the gain is at least this
        lower = costs[<int64_t>a * K + kb] - best[a]
        v = costs[<int64_t>b * K + ka] - best[b]
        if v < lower:
            lower = v
        if w - lower > GAIN_EPS:
            return True
        if w <= GAIN_EPS:
            return False  # the gain never exceeds w
    return _gain(costs, best, second, argbest, part, K, a, b, w) > GAIN_EPS


cdef struct Problem:
    # the inputs, read-only; ``nc[i * s0 + k * s1]`` is the cost of class k at node i
    const double* nc
    int64_t s0
    int64_t s1
    int32_t N
    int32_t K
    const int32_t* edges
    int64_t E
    const double* ec
    const uint8_t* part
    const uint8_t* local


cdef cppclass ClusterCosts:
    # Per cluster: the sum of its nodes' class costs (row-major, K per cluster), the
    # cheapest and second-cheapest of those sums and the class of the cheapest.
    vector[double] costs
    vector[double] best
    vector[double] second
    vector[int32_t] argbest


cdef cppclass NodeGraph:
    # The node adjacency in CSR form, both directions: the neighbours of node i are
    # nbr[off[i] : off[i + 1]] with edge costs wt[...] (duplicate edges stay separate).
    vector[int64_t] off
    vector[int32_t, RawAlloc[int32_t]] nbr
    vector[double, RawAlloc[double]] wt
    vector[uint8_t, RawAlloc[uint8_t]] loc   # the node graph only: 1 where the edge is local


cdef enum:
    TOP = 3

cdef cppclass TopClasses:
    # Per unit (node, superpixel or piece) its TOP cheapest classes, ordered by (cost,
    # class): cls[u * TOP + t] and their costs val[...]; class -1 (cost +inf) where K <
    # TOP. The improvement phase takes a unit's cheapest eligible class from this list
    # and scans all K classes only when none of the TOP is eligible: a node's K costs
    # lie N apart in the class-major network output, so one scan costs K cache misses.
    vector[int32_t] cls
    vector[double] val


cdef int _fill_i32(vector[int32_t]& v, size_t n, int32_t x) except -1 nogil:
    v.clear()
    v.resize(n, x)


cdef int _fill_i64(vector[int64_t]& v, size_t n, int64_t x) except -1 nogil:
    v.clear()
    v.resize(n, x)


cdef int _fill_u8(vector[uint8_t]& v, size_t n, uint8_t x) except -1 nogil:
    v.clear()
    v.resize(n, x)


cdef int _load_costs(const Problem& P, ClusterCosts& cc) except -1 nogil:
    """Every node its own cluster: copy its cost row, find its best classes."""
    cdef int32_t N = P.N, K = P.K, i, k, i0, i1
    cc.costs.resize(<size_t>N * K)
    cc.best.resize(N)
    cc.second.resize(N)
    cc.argbest.resize(N)
    cdef double* costs = &cc.costs[0]
    if P.s1 == 1:
        for i in range(N):
            for k in range(K):
                costs[<int64_t>i * K + k] = P.nc[i * P.s0 + k]
    else:
        # class-major input: transpose in blocks of nodes so reads and writes stay cached
        for i0 in range(0, N, 64):
            i1 = i0 + 64 if i0 + 64 < N else N
            for k in range(K):
                for i in range(i0, i1):
                    costs[<int64_t>i * K + k] = P.nc[i * P.s0 + k * P.s1]
    for i in range(N):
        _update_best(costs + <int64_t>i * K, K, &cc.best[i], &cc.second[i], &cc.argbest[i])


cdef inline void _top_insert(int32_t* tk, double* tv, int32_t k, double v) noexcept nogil:
    # classes arrive in increasing order, so a cost equal to a listed one goes after it
    cdef int32_t p = TOP - 1
    if not v < tv[p]:
        return
    while p > 0 and v < tv[p - 1]:
        tv[p] = tv[p - 1]; tk[p] = tk[p - 1]
        p -= 1
    tv[p] = v; tk[p] = k


cdef int _top_classes(const double* rows, int64_t s0, int64_t s1, int32_t n, int32_t K,
                      TopClasses& top) except -1 nogil:
    """The TOP cheapest classes of every unit, ordered by (cost, class), so the first is
    the best class of ``_update_best``; ``rows[u * s0 + k * s1]`` is the cost of class k
    at unit u."""
    cdef int32_t u, u0, u1, k
    cdef const double* col
    _fill_i32(top.cls, <size_t>n * TOP, -1)
    top.val.clear()
    top.val.resize(<size_t>n * TOP, INFINITY)
    cdef int32_t* tk = &top.cls[0]
    cdef double* tv = &top.val[0]
    if s0 == 1 and s1 != 1:
        # class-major input: blocks of units, each class's costs read contiguously
        for u0 in range(0, n, 256):
            u1 = u0 + 256 if u0 + 256 < n else n
            for k in range(K):
                col = rows + k * s1
                for u in range(u0, u1):
                    if col[u] < tv[<int64_t>u * TOP + TOP - 1]:
                        _top_insert(tk + <int64_t>u * TOP, tv + <int64_t>u * TOP, k, col[u])
    else:
        for u in range(n):
            for k in range(K):
                _top_insert(tk + <int64_t>u * TOP, tv + <int64_t>u * TOP, k,
                            rows[u * s0 + k * s1])


cdef int _node_best(const Problem& P, ClusterCosts& cc, TopClasses& top) except -1 nogil:
    """The cheapest classes of every node (``top``) and from them its best and
    second-best class cost (``cc``), without copying the cost rows."""
    cdef int32_t N = P.N, i
    _top_classes(P.nc, P.s0, P.s1, N, P.K, top)
    cc.best.resize(N)
    cc.second.resize(N)
    cc.argbest.resize(N)
    for i in range(N):
        cc.best[i] = top.val[<int64_t>i * TOP]
        cc.second[i] = top.val[<int64_t>i * TOP + 1]
        cc.argbest[i] = top.cls[<int64_t>i * TOP]


cdef inline int32_t _bucket(double d, double scale) noexcept nogil:
    """Pre-clustering bucket (of 1024) of a cost difference ``d >= 0``; NaN-proof."""
    cdef double t = d * scale
    if not (t > 0):
        return 0
    if t >= 1023:
        return 1023
    return <int32_t>t


cdef inline bint _sure_pair(const Problem& P, const ClusterCosts& cc,
                            const vector[uint8_t]& sure, int64_t e) noexcept nogil:
    cdef int32_t u = P.edges[2 * e], v = P.edges[2 * e + 1]
    return sure[u] and sure[v] and cc.argbest[u] == cc.argbest[v]


cdef int _precluster(const Problem& P, double pre_thr, int32_t pre_max, int32_t pre_max_thing,
                     double pre_margin, ClusterCosts& cc,
                     vector[int32_t]& parent) except -1 nogil:
    """Phase 0: contract strong local edges into superpixels of at most ``pre_max`` nodes.

    ``parent`` is the union-find forest of the superpixels; a superpixel's cost sums live
    in the row of its root.
    """
    cdef int32_t N = P.N, K = P.K, NBUCKET = 1024, i, k, ru, rv, bk
    cdef int64_t E = P.E, e, i64, nsel = 0
    cdef double wmax, scale
    cdef vector[int32_t] size
    cdef vector[int64_t] bucket_start
    cdef vector[int32_t] order
    cdef double* rr
    cdef double* rs
    parent.resize(N)
    size.resize(N)
    for i in range(N):
        parent[i] = i
        size[i] = 1
    if pre_max <= 1 or E == 0:
        return 0
    # With a margin, an edge qualifies only when both endpoints prefer the same class by
    # at least ``pre_margin`` over their second choice: a merge the contraction would make
    # anyway, since neither node is in doubt about its class.
    cdef vector[uint8_t] sure
    if pre_margin >= 0:
        sure.resize(N)
        for i in range(N):
            sure[i] = cc.second[i] - cc.best[i] >= pre_margin
    cdef const double* ec = P.ec
    cdef vector[int32_t] cand   # the candidate edges, in input order
    wmax = pre_thr
    for e in range(E):
        if ec[e] > wmax:
            wmax = ec[e]   # over all edges: the buckets' scale
        if ec[e] > pre_thr and P.local[e] and (
                pre_margin < 0 or _sure_pair(P, cc, sure, e)):
            cand.push_back(<int32_t>e)
    if wmax <= pre_thr:
        return 0
    # counting sort of the candidate edges by descending cost; the halves keep a difference
    # of two finite costs finite (1e308 - -1e308 overflows; a NaN bucket would index
    # anywhere), and scaling by 1/2 is exact, so the buckets are those of the differences
    nsel = cand.size()
    scale = (NBUCKET - 1) / (0.5 * wmax - 0.5 * pre_thr)
    _fill_i64(bucket_start, NBUCKET + 1, 0)
    for i64 in range(nsel):
        bk = _bucket(0.5 * wmax - 0.5 * ec[cand[i64]], scale)
        bucket_start[bk + 1] += 1
    for bk in range(NBUCKET):
        bucket_start[bk + 1] += bucket_start[bk]
    order.resize(nsel)
    for i64 in range(nsel):
        e = cand[i64]
        bk = _bucket(0.5 * wmax - 0.5 * ec[e], scale)
        order[bucket_start[bk]] = <int32_t>e
        bucket_start[bk] += 1
    cand.clear(); cand.shrink_to_fit()
    cdef double* costs = &cc.costs[0] if pre_margin < 0 else NULL
    for i64 in range(nsel):
        e = order[i64]
        ru = _find(&parent[0], P.edges[2 * e])
        rv = _find(&parent[0], P.edges[2 * e + 1])
        if ru == rv or size[ru] + size[rv] > pre_max:
            continue
        # Superpixels of a partitionable class stay smaller: a weak boundary between two
        # touching instances of one class is what a superpixel must not cross.
        if size[ru] + size[rv] > pre_max_thing and (P.part[cc.argbest[ru]] or
                                                    P.part[cc.argbest[rv]]):
            continue
        if pre_margin >= 0:
            # All nodes of a superpixel prefer one class, so their sums prefer it too and
            # the merge gains at least the (positive) edge cost: no cost rows needed.
            if size[ru] < size[rv]:
                ru, rv = rv, ru
            parent[rv] = ru
            size[ru] += size[rv]
            continue
        if not _gain_positive(costs, &cc.best[0], &cc.second[0], &cc.argbest[0], P.part, K,
                              ru, rv, ec[e]):
            continue
        if size[ru] < size[rv]:
            ru, rv = rv, ru
        parent[rv] = ru
        size[ru] += size[rv]
        rr = costs + <int64_t>ru * K
        rs = costs + <int64_t>rv * K
        for k in range(K):
            rr[k] += rs[k]
        _update_best(rr, K, &cc.best[ru], &cc.second[ru], &cc.argbest[ru])


cdef int32_t _compact(const Problem& P, vector[int32_t]& parent, ClusterCosts& cc,
                      vector[int32_t]& cid) except -1 nogil:
    """Number the superpixels 0..M-1 by first node (``cid`` per node), move their cost rows
    to rows 0..M-1 and return M."""
    cdef int32_t N = P.N, K = P.K, M = 0, i, k, r, a
    cdef double* costs = &cc.costs[0]
    _fill_i32(cid, N, -1)
    for i in range(N):
        r = _find(&parent[0], i)
        if cid[r] < 0:
            cid[r] = M
            M += 1
        cid[i] = cid[r]
    # a root's compact id never exceeds its node index, so rows only move forward
    for i in range(N):
        if parent[i] == i:
            a = cid[i]
            if a != i:
                for k in range(K):
                    costs[<int64_t>a * K + k] = costs[<int64_t>i * K + k]
                cc.best[a] = cc.best[i]; cc.second[a] = cc.second[i]
                cc.argbest[a] = cc.argbest[i]
    return M


cdef int _node_graph(const Problem& P, NodeGraph& g) except -1 nogil:
    """The node adjacency (CSR, both directions), read by the region graph and the
    improvement phase; a node's entries are in the order of its edges.

    Filled in blocks of 4096 nodes: the edge ends (2 e + side, 32 bits, the edge list
    taken in chunks of NODE_GRAPH_CHUNK edges) are first bucketed by their node's block
    (one sequential stream per block), then each block's CSR rows, small enough to stay
    in cache, are filled from its bucket. Filling the rows straight from the edge list
    would write each entry to a cache line of its own.
    """
    cdef int32_t N = P.N, i, u, n, B, blk
    cdef int64_t e, e0, e1, q, o
    cdef uint32_t x
    cdef vector[int64_t] fill, boff
    cdef vector[uint32_t, RawAlloc[uint32_t]] ends
    _fill_i64(g.off, N + 1, 0)
    for e in range(P.E):
        g.off[P.edges[2 * e] + 1] += 1
        g.off[P.edges[2 * e + 1] + 1] += 1
    for i in range(N):
        g.off[i + 1] += g.off[i]
    g.nbr.resize(g.off[N])
    g.wt.resize(g.off[N])
    g.loc.resize(g.off[N])
    fill.resize(N)
    for i in range(N):
        fill[i] = g.off[i]
    B = (N + 4095) >> 12
    boff.resize(B + 1)
    ends.resize(2 * min(P.E, <int64_t>NODE_GRAPH_CHUNK))
    e0 = 0
    while e0 < P.E:
        e1 = min(P.E, e0 + <int64_t>NODE_GRAPH_CHUNK)
        # the chunk's ends per block, then the buckets' offsets
        for blk in range(B + 1):
            boff[blk] = 0
        for e in range(e0, e1):
            boff[(P.edges[2 * e] >> 12) + 1] += 1
            boff[(P.edges[2 * e + 1] >> 12) + 1] += 1
        for blk in range(B):
            boff[blk + 1] += boff[blk]
        for e in range(e0, e1):
            x = <uint32_t>(2 * (e - e0))
            blk = P.edges[2 * e] >> 12
            ends[boff[blk]] = x; boff[blk] += 1
            blk = P.edges[2 * e + 1] >> 12
            ends[boff[blk]] = x + 1; boff[blk] += 1
        for q in range(2 * (e1 - e0)):   # bucket by bucket
            x = ends[q]
            e = e0 + (x >> 1)
            n = P.edges[2 * e + (x & 1)]
            u = P.edges[2 * e + 1 - (x & 1)]
            o = fill[n]
            g.nbr[o] = u; g.wt[o] = P.ec[e]; g.loc[o] = P.local[e]
            fill[n] = o + 1
        e0 = e1


cdef inline int _add_pull(vector[int32_t]& mark, vector[int32_t]& keys,
                          vector[double]& sums, int32_t c, double w) except -1 nogil:
    # add edge cost w to the sum for cluster c: ``keys`` lists the clusters in order of
    # first appearance, ``mark[c]`` is c's place there (-1: none yet; the caller resets)
    if mark[c] < 0:
        mark[c] = keys.size()
        keys.push_back(c)
        sums.push_back(w)
    else:
        sums[mark[c]] += w


cdef int _region_graph(const Problem& P, int32_t M, const vector[int32_t]& cid,
                        const NodeGraph& g, vector[AdjMap]& adj,
                        NodeGraph& sg, bint with_maps, const NodeGraph* coarse,
                        const int32_t* coarse_of, const int32_t* unit_of) except -1 nogil:
    """Phase 1: superpixel adjacency with summed parallel edges, as maps for the
    contraction (``adj``) and in CSR form for the superpixel moves (``sg``).

    Walks each superpixel's nodes and sums their edges per neighbouring superpixel with a
    marker array, so every map is filled once with distinct keys.

    ``coarse`` (or NULL): the graph of a coarser partition of which some units are whole
    clusters; ``coarse_of[a]`` is the coarse cluster that unit a is (-1: none),
    ``unit_of[t]`` the unit that coarse cluster t is (-1: none). A unit that is a whole
    coarse cluster with only whole coarse neighbours takes that cluster's row, renamed:
    the walk over its nodes would sum the same edges in the same order.
    """
    cdef int32_t N = P.N, i, a, b, t
    cdef int64_t p, q, mi
    cdef bint reuse
    cdef vector[int64_t] moff, fill
    cdef vector[int32_t] mark
    cdef vector[int32_t] members, uniq
    cdef vector[double] usum
    if with_maps:
        adj.resize(M)
    sg.off.resize(M + 1)
    sg.off[0] = 0
    sg.nbr.clear(); sg.wt.clear()
    _fill_i64(moff, M + 1, 0)
    for i in range(N):
        moff[cid[i] + 1] += 1
    for a in range(M):
        moff[a + 1] += moff[a]
    members.resize(N)
    fill.resize(M)
    for a in range(M):
        fill[a] = moff[a]
    for i in range(N):
        members[fill[cid[i]]] = i
        fill[cid[i]] += 1
    _fill_i32(mark, M, -1)
    for a in range(M):
        uniq.clear(); usum.clear()
        reuse = coarse != NULL and coarse_of[a] >= 0
        if reuse:
            t = coarse_of[a]
            for p in range(coarse.off[t], coarse.off[t + 1]):
                if unit_of[coarse.nbr[p]] < 0:
                    reuse = False
                    break
        if reuse:
            for p in range(coarse.off[t], coarse.off[t + 1]):
                uniq.push_back(unit_of[coarse.nbr[p]])
                usum.push_back(coarse.wt[p])
        else:
            for mi in range(moff[a], moff[a + 1]):
                i = members[mi]
                for p in range(g.off[i], g.off[i + 1]):
                    b = cid[g.nbr[p]]
                    if b != a:
                        _add_pull(mark, uniq, usum, b, g.wt[p])
        if with_maps:
            adj[a].reserve(uniq.size())
        for q in range(<int64_t>uniq.size()):
            if with_maps:
                adj[a].slot(uniq[q])[0] = usum[q]
            mark[uniq[q]] = -1
            sg.nbr.push_back(uniq[q])
            sg.wt.push_back(usum[q])
        sg.off[a + 1] = sg.nbr.size()


cdef inline int _heap_push(vector[HeapEntry]& heap, double g, int32_t a,
                            int32_t b) except -1 nogil:
    heap4_push(heap, HeapEntry(g, IntPair(a, b)))


cdef void _drop_dead_entries(vector[HeapEntry]& heap, const vector[uint8_t]& alive,
                             vector[int32_t]& inheap) noexcept nogil:
    """Remove the heap entries that name a merged-away cluster and re-heap the rest in
    linear time. The entries left come out in the same order (the heap's order is a
    total order on entries), and a removed one would have been dropped when popped:
    GAEC makes the same merges."""
    cdef size_t i, n = 0
    cdef int32_t a, b
    for i in range(heap.size()):
        a = heap[i].second.first
        b = heap[i].second.second
        if alive[a] and alive[b]:
            heap[n] = heap[i]
            n += 1
        else:
            inheap[a] -= 1; inheap[b] -= 1
    heap.resize(n)
    heap4_make(heap)


cdef int _gaec(const Problem& P, int32_t M, ClusterCosts& cc, vector[AdjMap]& adj,
                vector[int32_t]& merged_into, bint edge_order, Stats* st) except -1 nogil:
    """Phase 2: greedy additive edge contraction of the superpixels, merges taken in the
    order of ``_order`` (their gains, or with ``edge_order`` their edge costs for two
    clusters of one stuff class).

    Consumes ``adj``; ``merged_into[a]`` is the final cluster (a surviving superpixel id)
    of superpixel a.
    """
    cdef int32_t K = P.K, a, b, c, k, r, s
    cdef double w, g, g2, pr
    cdef const uint8_t* part = P.part
    cdef double* costs = &cc.costs[0]
    cdef double* best = &cc.best[0]
    cdef double* second = &cc.second[0]
    cdef int32_t* argbest = &cc.argbest[0]
    cdef double* rr
    cdef double* rs
    cdef vector[HeapEntry] heap
    cdef vector[uint8_t] alive
    cdef int64_t q, f, cap
    cdef const int32_t* keys
    cdef const double* vals
    cdef double* pw
    cdef HeapEntry top
    cdef bint pushed
    # Entries naming a merged-away cluster are dropped when popped; most are (82-96 % of
    # the pops on the benchmark problems), and each such pop costs a sift through the whole
    # heap. ``inheap[a]`` counts the entries naming a, ``dead`` adds up those of each
    # cluster when it merges away (an upper bound of the dead entries left: one whose two
    # ends died counts twice, and those popped since stay counted); past half the heap
    # they are dropped at once (``_drop_dead_entries``).
    cdef vector[int32_t] inheap
    cdef int64_t dead = 0
    _fill_i32(inheap, M, 0)
    _fill_u8(alive, M, 1)
    merged_into.resize(M)
    for a in range(M):
        merged_into[a] = a
    while True:
        # Push every pair whose merge pays. The first sweep fills the heap; later sweeps
        # catch gains that grew lazily without an entry, so no positive merge is left.
        pushed = False
        for a in range(M):
            if not alive[a]:
                continue
            cap = adj[a].capacity()
            for q in range(cap):
                b = adj[a].keys[q]
                if b > a:
                    g = _gain(costs, best, second, argbest, part, K, a, b, adj[a].vals[q])
                    if g > GAIN_EPS:
                        # the heap is empty here: ordered once below
                        pr = _order(argbest, part, a, b, adj[a].vals[q], g, edge_order)
                        heap.push_back(HeapEntry(pr, IntPair(a, b)))
                        inheap[a] += 1; inheap[b] += 1
                        pushed = True
        if not pushed:
            break
        heap4_make(heap)
        while not heap.empty():
            top = heap.front()
            heap4_pop(heap)
            st.heap_pops += 1
            a = top.second.first
            b = top.second.second
            inheap[a] -= 1; inheap[b] -= 1
            if not alive[a] or not alive[b]:
                continue
            f = adj[a].find(b)
            if f < 0:
                continue
            w = adj[a].vals[f]
            g2 = _gain(costs, best, second, argbest, part, K, a, b, w)
            if g2 <= GAIN_EPS:
                continue
            pr = _order(argbest, part, a, b, w, g2, edge_order)
            if pr < top.first - 1e-9 * (1.0 + abs(top.first)):
                _heap_push(heap, pr, a, b)
                inheap[a] += 1; inheap[b] += 1
                continue
            # merge the cluster with the smaller adjacency into the larger
            if adj[a].size() >= adj[b].size():
                r = a; s = b
            else:
                r = b; s = a
            rr = costs + <int64_t>r * K
            rs = costs + <int64_t>s * K
            for k in range(K):
                rr[k] += rs[k]
            _update_best(rr, K, &best[r], &second[r], &argbest[r])
            alive[s] = 0
            dead += inheap[s]
            merged_into[s] = r
            st.merges += 1
            adj[r].erase(s)
            cap = adj[s].capacity()
            keys = &adj[s].keys[0] if cap > 0 else NULL
            vals = &adj[s].vals[0] if cap > 0 else NULL
            for q in range(cap):
                c = keys[q]
                if c >= 0 and c != r:
                    adj[c].erase(s)
                    pw = adj[c].slot(r)
                    w = pw[0] + vals[q]
                    pw[0] = w
                    adj[r].slot(c)[0] = w
                    g = _gain(costs, best, second, argbest, part, K, r, c, w)
                    if g > GAIN_EPS:
                        _heap_push(heap, _order(argbest, part, r, c, w, g, edge_order), r, c)
                        inheap[r] += 1; inheap[c] += 1
            adj[s].release()
            if 2 * dead > <int64_t>heap.size() and heap.size() > 256:
                _drop_dead_entries(heap, alive, inheap)
                dead = 0
    # resolve every superpixel to its final cluster
    for a in range(M):
        r = a
        while merged_into[r] != r:
            r = merged_into[r]
        s = a
        while merged_into[s] != r:
            c = merged_into[s]
            merged_into[s] = r
            s = c
    st.clusters_after_gaec = M - st.merges


cdef int _cluster_ids(const Problem& P, int32_t M, const vector[int32_t]& merged_into,
                      const ClusterCosts& cc, vector[int32_t]& spcl,
                      vector[int32_t]& clclass) except -1 nogil:
    """Cluster ids of the superpixels for the improvement phases.

    A GAEC cluster of a partitionable class keeps its id (< M); every non-partitionable
    class k is the single cluster M + k. Fresh clusters created by the improvement phases
    get ids from M + K upwards (room for one per superpixel and one per node; the moves
    grow the arrays beyond that when needed).
    """
    cdef int32_t K = P.K, a, k, r
    spcl.resize(M)
    _fill_i32(clclass, <int64_t>M + K + M + P.N, -1)
    for a in range(M):
        if merged_into[a] == a:
            clclass[a] = cc.argbest[a]
    for k in range(K):
        clclass[M + k] = k
    for a in range(M):
        r = merged_into[a]
        k = cc.argbest[r]
        spcl[a] = r if P.part[k] else M + k


cdef int _count(const vector[int32_t]& cl, vector[int32_t]& clsize) except -1 nogil:
    cdef size_t n = clsize.size(), i
    _fill_i32(clsize, n, 0)
    for i in range(cl.size()):
        clsize[cl[i]] += 1


cdef double _objective(const Problem& P, const vector[int32_t]& cl,
                       const vector[int32_t]& clclass) noexcept nogil:
    cdef double obj = 0.0
    cdef int32_t i
    cdef int64_t e
    for i in range(P.N):
        obj += P.nc[i * P.s0 + clclass[cl[i]] * P.s1]
    for e in range(P.E):
        if cl[P.edges[2 * e]] != cl[P.edges[2 * e + 1]]:
            obj += P.ec[e]
    return obj


cdef inline void _mark_around(const NodeGraph& g, int32_t n, uint8_t* changed,
                              uint8_t mark) noexcept nogil:
    # node n and its neighbours: the nodes whose next visit may move them after n moved
    # (``mark``, non-zero, may tell when)
    cdef int64_t p
    changed[n] = mark
    for p in range(g.off[n], g.off[n + 1]):
        changed[g.nbr[p]] = mark


cdef inline int32_t _new_cluster(vector[int32_t]& clclass, vector[int32_t]& lmark,
                                 vector[int32_t]* clsize, int32_t* next_id,
                                 int32_t k) except -1 nogil:
    # the next fresh cluster id, of class k; the per-cluster arrays grow past the room
    # that ``_cluster_ids`` left (``lmark`` unmarked, ``clsize`` if given empty)
    cdef int32_t c = next_id[0]
    next_id[0] += 1
    if <size_t>c >= clclass.size():
        clclass.push_back(-1); lmark.push_back(-1)
        if clsize != NULL:
            clsize.push_back(0)
    clclass[c] = k
    return c


cdef int _improve(const double* rows, int64_t s0, int64_t s1, int32_t N, int32_t K,
                  const uint8_t* part, int32_t M, const TopClasses& top,
                  const NodeGraph& g, vector[int32_t]& cl, vector[int32_t]& clclass,
                  vector[int32_t]& clsize, int32_t* next_id, int64_t budget,
                  uint8_t* changed, Stats* st) except -1 nogil:
    """Phase 3: single-unit moves, each strictly lowering the objective; returns whether
    no unit is left to examine (else the budget of visits ran out).

    The units are the nodes, or the superpixels (then ``rows`` are their summed cost rows
    and ``g`` their summed adjacency); ``top`` holds their cheapest classes. A unit moves
    to a neighbouring cluster (taking its class) or to a new cluster of any class; units
    next to a moved one are re-examined. ``clsize`` counts units; new cluster ids are
    taken from ``next_id`` upwards.

    ``changed`` (or NULL): the units whose visit in the first sweep may move them; every
    other unit is known to stay (the state around it is that of an earlier visit that
    left it), so its visit is counted but not made. The kernel marks the neighbours of
    each moved unit here, so the result is that of visiting every unit.
    """
    cdef int32_t i, j, c, k, ci, ki, tgt, kt, nl, kb, t
    cdef const int32_t* tk
    cdef const double* tv
    cdef bint eligible, found
    cdef int64_t head = 0, qn, p, q, visits = 0, first_sweep
    cdef double cur, bestc, cand, wown
    cdef const double* row
    cdef bint interior
    cdef vector[int32_t] queue, lcl, lmark
    cdef vector[double] lw
    cdef vector[uint8_t] inq
    queue.resize(N)
    _fill_u8(inq, N, 1)
    for i in range(N):
        queue[i] = i
    qn = N   # number of queued entries (ring buffer of capacity N)
    first_sweep = N   # entries of the first sweep still queued (they come first)
    _fill_i32(lmark, clclass.size(), -1)
    while qn > 0 and visits < budget:
        i = queue[head]
        head += 1
        if head == N:
            head = 0
        qn -= 1
        inq[i] = 0
        st.improve_visits += 1
        visits += 1
        if first_sweep > 0:
            first_sweep -= 1
            if changed != NULL and not changed[i]:
                continue
        ci = cl[i]
        ki = clclass[ci]
        row = rows + i * s0
        # Fast exit for the common interior node: all neighbours in its cluster, its
        # best class already chosen and a non-negative pull from the cluster. Then no
        # class is cheaper and leaving would cut attractive edges.
        tk = &top.cls[<int64_t>i * TOP]
        tv = &top.val[<int64_t>i * TOP]
        if tk[0] == ki:
            wown = 0.0
            interior = True
            for p in range(g.off[i], g.off[i + 1]):
                if cl[g.nbr[p]] != ci:
                    interior = False
                    break
                wown += g.wt[p]
            if interior and wown >= 0.0:
                continue
        # weights from i to each neighbouring cluster
        lcl.clear(); lw.clear()
        for p in range(g.off[i], g.off[i + 1]):
            _add_pull(lmark, lcl, lw, cl[g.nbr[p]], g.wt[p])
        wown = lw[lmark[ci]] if lmark[ci] >= 0 else 0.0
        cur = row[ki * s1] - wown
        bestc = cur - 1e-9 * (1.0 + abs(cur))
        tgt = -1
        kt = -1
        nl = lcl.size()
        for q in range(nl):
            c = lcl[q]
            if c == ci:
                continue
            cand = row[clclass[c] * s1] - lw[q]
            if cand < bestc:
                bestc = cand; tgt = c; kt = clclass[c]
        # A class taken without joining a neighbouring cluster: a new cluster of a
        # partitionable class, or a non-partitionable class no neighbour has. The
        # cheapest eligible class is usually among the unit's TOP cheapest, which spares
        # the scan of all K (same choice: the list is ordered by cost, then class).
        kb = tk[0]
        if part[kb] and kb == ki and clsize[ci] == 1:
            pass  # already alone in its best class: nothing cheaper exists
        elif part[kb] or (lmark[M + kb] < 0 and kb != ki):
            cand = row[kb * s1]
            if cand < bestc:
                bestc = cand; kt = kb
                tgt = -2 if part[kb] else M + kb
        else:
            found = False
            for t in range(1, TOP):
                k = tk[t]
                if k < 0:
                    break
                if part[k]:
                    eligible = k != ki or clsize[ci] != 1
                else:
                    eligible = lmark[M + k] < 0 and k != ki
                if eligible:
                    found = True
                    if tv[t] < bestc:
                        bestc = tv[t]; kt = k
                        tgt = -2 if part[k] else M + k
                    break
            if not found:
                for k in range(K):
                    if part[k]:
                        if k == ki and clsize[ci] == 1:
                            continue
                        cand = row[k * s1]
                        if cand < bestc:
                            bestc = cand; tgt = -2; kt = k
                    elif lmark[M + k] < 0 and k != ki:
                        cand = row[k * s1]
                        if cand < bestc:
                            bestc = cand; tgt = M + k; kt = k
        for q in range(nl):
            lmark[lcl[q]] = -1
        if tgt == -1:
            continue
        if tgt == -2:
            # a unit may found a new cluster more than once (each move still gains)
            tgt = _new_cluster(clclass, lmark, &clsize, next_id, kt)
        clsize[ci] -= 1
        clsize[tgt] += 1
        cl[i] = tgt
        st.improve_moves += 1
        for p in range(g.off[i], g.off[i + 1]):
            j = g.nbr[p]
            if changed != NULL:
                changed[j] = 1
            if not inq[j]:
                inq[j] = 1
                queue[(head + qn) % N] = j
                qn += 1
    return qn == 0


cdef cppclass KLState:
    # Buffers of the Kernighan-Lin sequences, per node: edge costs into X and Y, class
    # cost of Y's class minus X's, a version number for the heap's lazy entries and a
    # state (0 untouched, 1 weights known, 2 moved in this sequence); the moved nodes in
    # order, the touched ones, and the heap of (-change, (node, version)).
    vector[double] wx, wy, dxy
    vector[int32_t] ver, seq, touched
    vector[uint8_t] state
    vector[HeapEntry] heap


cdef inline void _kl_reset(KLState& S) noexcept nogil:
    # no candidates, no moves: the state every sequence starts from
    cdef int32_t i
    for i in range(<int32_t>S.touched.size()):
        S.state[S.touched[i]] = 0
    S.touched.clear(); S.seq.clear(); S.heap.clear()


cdef inline int _kl_push(const vector[int32_t]& cl, KLState& S, int32_t n,
                         int32_t X) except -1 nogil:
    # (re)enter candidate n in the heap with the change of its move to the other cluster
    cdef double d = S.dxy[n] + S.wx[n] - S.wy[n] if cl[n] == X else S.wy[n] - S.wx[n] - S.dxy[n]
    S.ver[n] += 1
    _heap_push(S.heap, -d, n, S.ver[n])


cdef inline int _kl_touch(const Problem& P, const NodeGraph& g, const vector[int32_t]& cl,
                          KLState& S, int32_t n, int32_t X, int32_t Y, int32_t kx,
                          int32_t ky) except -1 nogil:
    # make node n (in X or Y, untouched) a candidate: its edge costs into X and Y, the
    # class cost difference, its heap entry
    cdef int64_t p
    cdef int32_t c
    cdef double sx = 0.0, sy = 0.0
    for p in range(g.off[n], g.off[n + 1]):
        c = cl[g.nbr[p]]
        if c == X:
            sx += g.wt[p]
        elif c == Y:
            sy += g.wt[p]
    S.wx[n] = sx; S.wy[n] = sy
    S.dxy[n] = P.nc[n * P.s0 + ky * P.s1] - P.nc[n * P.s0 + kx * P.s1]
    S.state[n] = 1
    S.touched.push_back(n)
    _kl_push(cl, S, n, X)


cdef double _kl_sequence(const Problem& P, const NodeGraph& g, vector[int32_t]& cl,
                         KLState& S, int32_t X, int32_t Y, int32_t kx, int32_t ky,
                         int32_t max_moves, int32_t patience, uint8_t* changed,
                         uint8_t mark, int32_t* kept, int32_t* seen=NULL,
                         int32_t stamp=0) except? 1.0 nogil:
    """One Kernighan-Lin sequence between clusters X and Y from the candidates in ``S``;
    keeps its best prefix if that lowers the objective. Returns the change of the
    objective (<= 0), ``kept`` the number of moves kept; resets ``S``.

    The candidate whose move to the other cluster (taking its class) lowers the
    objective most, or raises it least, moves and is locked; its untouched neighbours in
    X or Y along local edges become candidates, and the weights of the known ones are
    updated along every edge. The sequence stops after ``max_moves`` moves, or
    ``patience`` moves after its best point, and is cut back to its best prefix. If it
    keeps nothing and ``seen`` is given, the nodes it touched get ``stamp`` there.
    """
    cdef int32_t n, j, src, nseq = 0, bestk = 0, i
    cdef int64_t p
    cdef double cum = 0.0, best = 0.0, w
    cdef HeapEntry top
    while nseq < max_moves and nseq - bestk < patience and S.heap.size() > 0:
        top = S.heap[0]
        heap4_pop(S.heap)
        n = top.second.first
        if S.state[n] == 2 or top.second.second != S.ver[n]:
            continue   # stale entry
        src = cl[n]
        cl[n] = Y if src == X else X
        S.state[n] = 2
        S.seq.push_back(n)
        nseq += 1
        cum -= top.first
        if cum < best - GAIN_EPS * (1.0 + abs(best)):
            best = cum; bestk = nseq
        for p in range(g.off[n], g.off[n + 1]):
            j = g.nbr[p]
            if S.state[j] == 2 or (cl[j] != X and cl[j] != Y):
                continue
            if S.state[j] == 0:
                if g.loc[p]:
                    _kl_touch(P, g, cl, S, j, X, Y, kx, ky)
                continue
            w = g.wt[p]
            if src == X:
                S.wx[j] -= w; S.wy[j] += w
            else:
                S.wy[j] -= w; S.wx[j] += w
            _kl_push(cl, S, j, X)
    for i in range(nseq - 1, bestk - 1, -1):
        n = S.seq[i]
        cl[n] = Y if cl[n] == X else X
    for i in range(bestk):
        _mark_around(g, S.seq[i], changed, mark)
    if seen != NULL and bestk == 0:
        for i in range(<int32_t>S.touched.size()):
            seen[S.touched[i]] = stamp
    _kl_reset(S)
    kept[0] = bestk
    return best if bestk > 0 else 0.0


cdef int _touching_pairs(const Problem& P, const vector[int32_t]& cl, int64_t C,
                         const uint8_t* dirty, const uint8_t* changed, uint8_t last,
                         vector[pair[int64_t, int32_t]]& bnd) except -1 nogil:
    """The boundary nodes of every two clusters that touch along a local edge, sorted by
    the pair's key ``a * C + b`` (a < b): ``bnd`` holds (key, node), both ends of each
    such edge. With ``dirty`` (or NULL) only pairs with a dirty cluster; with
    ``changed`` (or NULL) only edges with an end marked ``last`` there."""
    cdef int64_t e, key
    cdef int32_t u, v, a, b
    bnd.clear()
    for e in range(P.E):
        if not P.local[e]:
            continue
        u = P.edges[2 * e]; v = P.edges[2 * e + 1]
        a = cl[u]; b = cl[v]
        if a == b or (dirty != NULL and not (dirty[a] or dirty[b])):
            continue
        if changed != NULL and changed[u] != last and changed[v] != last:
            continue
        key = <int64_t>a * C + b if a < b else <int64_t>b * C + a
        bnd.push_back(pair[int64_t, int32_t](key, u))
        bnd.push_back(pair[int64_t, int32_t](key, v))
    sort(bnd.begin(), bnd.end())


cdef int64_t _boundary_moves(const Problem& P, const NodeGraph& g, const TopClasses& top,
                             vector[int32_t]& cl, vector[int32_t]& clclass, int32_t M,
                             int32_t* next_id, int32_t max_moves, int32_t max_rounds,
                             uint8_t* changed, Stats* st) except -1 nogil:
    """Phase 3, last: Kernighan-Lin moves (``_kl_sequence``) across the boundary of every
    two clusters that touch along a local edge, and from every cluster to each class that
    some of its nodes prefer to its own; returns the number of node moves kept.

    A pair's sequence starts from the nodes of its common boundary, so a strip of nodes
    can shift a boundary where every single move raises the objective. In the first
    round each boundary node of the pair also starts a short sequence of its own (at
    most ``LOCAL_MOVES`` moves, ending ``LOCAL_PATIENCE`` after its best point), unless
    an earlier short sequence of the pair touched it and kept nothing, or its move alone
    loses more than its summed edge costs to its own side: a small gain at one place of
    a long boundary is found where the pair's sequence, which takes its moves from the
    whole boundary, adds other places' losses to it. A class's
    sequences start from the nodes of the cluster that list the class before the
    cluster's own among their cheapest (``top``), one sequence per group of such nodes
    connected along local edges; the other side is the class's cluster
    (non-partitionable) or a new cluster of that class, so a part of a cluster can change
    class as a whole, also where a cluster of that class touches it (a pair's sequences
    start from single boundary nodes or the whole boundary, never from such a group).
    Most such groups are single noisy nodes: a group is skipped where moving it alone
    would cut more than 4 times its class gain in edge costs, and a class sequence ends
    ``2 n + 5`` moves after its best point, for a group of n nodes (also where that is
    more than a pair's patience: a large group must often move whole, its surroundings
    after it, before the objective drops below the start).

    Rounds: the first visits every pair in order of the cluster ids, then the classes'
    sequences; each later round visits only the pairs with a cluster that the round
    before changed, and starts a pair's sequence only from the boundary nodes that the
    round before moved or that neighbour a node it moved (elsewhere on the boundary the
    sequence would start as it did before), until a round gains nothing or
    ``max_rounds`` are done. ``changed`` marks the nodes that moved and their
    neighbours, with the round's number (``1 + r % 255``, never 0).
    """
    cdef int32_t N = P.N, K = P.K, i, u, v, a, b, X, Y, n, kx, ky, r, nk, t, k
    cdef int32_t patience = max_moves // 5 if max_moves >= 5 else 1
    cdef int64_t e, q, q0, q1, h, p, C, key, kept = 0
    cdef vector[int32_t] comp
    cdef vector[int32_t] seen   # per node: the stamp of the last pair or group that used it
    cdef vector[uint8_t] seedmark
    cdef int32_t stamp = 0
    cdef double gain, cut
    cdef double gained, w
    cdef vector[pair[int64_t, int32_t]] bnd   # (pair key, boundary node), sorted
    cdef vector[uint8_t] dirty, dirty_next   # clusters changed in this round, the one before
    cdef KLState S
    S.wx.resize(N); S.wy.resize(N); S.dxy.resize(N)
    _fill_i32(S.ver, N, 0)
    _fill_u8(S.state, N, 0)
    _fill_u8(dirty, clclass.size(), 1)
    _fill_u8(dirty_next, clclass.size(), 0)
    _fill_u8(seedmark, N, 0)
    _fill_i32(seen, N, 0)
    cdef uint8_t mark, last = 0   # ``changed`` marks of this round and of the one before
    for r in range(max_rounds):
        gained = 0.0
        mark = <uint8_t>(1 + r % 255)
        C = clclass.size()
        # pairs of clusters touching along a local edge; after the first round only
        # along edges next to the last round's moves (elsewhere a sequence would repeat)
        _touching_pairs(P, cl, C, &dirty[0], changed if r > 0 else NULL, last, bnd)
        q0 = 0
        while q0 < <int64_t>bnd.size():
            key = bnd[q0].first
            X = <int32_t>(key // C); Y = <int32_t>(key % C)
            kx = clclass[X]; ky = clclass[Y]
            q = q0
            while q < <int64_t>bnd.size() and bnd[q].first == key:
                n = bnd[q].second
                q += 1
                if S.state[n] == 0 and (cl[n] == X or cl[n] == Y):
                    _kl_touch(P, g, cl, S, n, X, Y, kx, ky)
            w = _kl_sequence(P, g, cl, S, X, Y, kx, ky, max_moves, patience, changed, mark, &nk)
            if nk > 0:
                gained += w
                kept += nk
                dirty_next[X] = 1; dirty_next[Y] = 1
            if r == 0:
                # Short sequences, each from one boundary node: the pair's sequence takes
                # its moves from the whole boundary, where one place's losses can hide
                # another's gain. Nodes that a short sequence touched without keeping a
                # move do not start one.
                stamp += 1
                for q1 in range(q0, q):
                    n = bnd[q1].second
                    if seen[n] == stamp or (cl[n] != X and cl[n] != Y):
                        continue
                    seen[n] = stamp
                    _kl_touch(P, g, cl, S, n, X, Y, kx, ky)
                    if -S.heap[0].first > (S.wx[n] if cl[n] == X else S.wy[n]):
                        # Its move alone loses more than its edges to its own side can
                        # give back when neighbours follow it: the gain would have to
                        # come from other nodes, whose own short sequences look for it.
                        _kl_reset(S)
                        continue
                    w = _kl_sequence(P, g, cl, S, X, Y, kx, ky, LOCAL_MOVES, LOCAL_PATIENCE,
                                     changed, mark, &nk, &seen[0], stamp)
                    if nk > 0:
                        gained += w
                        kept += nk
                        dirty_next[X] = 1; dirty_next[Y] = 1
            q0 = q
        # (cluster, class) pairs, first round only: the nodes that prefer the class to
        # their cluster's
        bnd.clear()
        for n in range(N if r == 0 else 0):
            X = cl[n]
            kx = clclass[X]
            for t in range(TOP):
                k = top.cls[<int64_t>n * TOP + t]
                if k < 0 or k == kx:
                    break
                # also where a neighbour holds the class: the boundary sequences start
                # from single nodes or the whole boundary, not from such a group
                bnd.push_back(pair[int64_t, int32_t](<int64_t>X * K + k, n))
        sort(bnd.begin(), bnd.end())
        q0 = 0
        while q0 < <int64_t>bnd.size():
            key = bnd[q0].first
            X = <int32_t>(key // K); ky = <int32_t>(key % K)
            kx = clclass[X]
            q = q0
            while q < <int64_t>bnd.size() and bnd[q].first == key:
                if cl[bnd[q].second] == X:
                    seedmark[bnd[q].second] = 1
                q += 1
            # one sequence per group of these nodes connected along local edges, so
            # that separate islands are moved (or not) each on its own merits
            for q1 in range(q0, q):
                n = bnd[q1].second
                if seedmark[n] != 1:
                    continue
                comp.clear()
                comp.push_back(n)
                seedmark[n] = 2
                h = 0
                while h < <int64_t>comp.size():
                    u = comp[h]
                    h += 1
                    for p in range(g.off[u], g.off[u + 1]):
                        v = g.nbr[p]
                        if g.loc[p] and seedmark[v] == 1:
                            seedmark[v] = 2
                            comp.push_back(v)
                # Moving the group alone changes the objective by cut - gain: its class
                # gain, against the edges it cuts from the rest of X (less those it
                # joins in Y). Where that cut is more than 4 times the gain, the group is
                # noise held by its surroundings: skipped (most groups are single
                # noisy nodes, and their sequences would keep nothing).
                stamp += 1
                for h in range(<int64_t>comp.size()):
                    seen[comp[h]] = stamp
                gain = 0.0; cut = 0.0
                for h in range(<int64_t>comp.size()):
                    u = comp[h]
                    gain += P.nc[u * P.s0 + kx * P.s1] - P.nc[u * P.s0 + ky * P.s1]
                    for p in range(g.off[u], g.off[u + 1]):
                        v = g.nbr[p]
                        if seen[v] == stamp:
                            continue
                        if cl[v] == X:
                            cut += g.wt[p]
                        elif P.part[ky] == 0 and cl[v] == M + ky:
                            cut -= g.wt[p]
                if cut > 4.0 * gain:
                    continue
                if P.part[ky]:
                    # a new cluster, numbered only if the sequence keeps a move
                    Y = next_id[0]
                    if <size_t>Y >= clclass.size():
                        clclass.push_back(-1)
                        dirty.push_back(0); dirty_next.push_back(0)
                    clclass[Y] = ky
                else:
                    Y = M + ky
                for h in range(<int64_t>comp.size()):
                    # an earlier sequence of this cluster may have moved the node
                    if cl[comp[h]] == X and S.state[comp[h]] == 0:
                        _kl_touch(P, g, cl, S, comp[h], X, Y, kx, ky)
                # patience 2 n + 5, not the pairs' 40: a group of n must often move
                # whole (and its surroundings after it) before the objective drops
                w = _kl_sequence(P, g, cl, S, X, Y, kx, ky, max_moves,
                                 2 * <int32_t>comp.size() + 5, changed, mark, &nk)
                if nk > 0:
                    gained += w
                    kept += nk
                    dirty_next[X] = 1; dirty_next[Y] = 1
                    if Y == next_id[0]:
                        next_id[0] += 1
                elif Y == next_id[0]:
                    clclass[Y] = -1
            for q1 in range(q0, q):
                seedmark[bnd[q1].second] = 0
            q0 = q
        if gained == 0.0:
            break
        last = mark
        for i in range(<int32_t>dirty.size()):
            dirty[i] = dirty_next[i]
            dirty_next[i] = 0
    st.boundary_moves += kept
    return kept


cdef int64_t _instance_splits(const Problem& P, const NodeGraph& g, vector[int32_t]& cl,
                              vector[int32_t]& clclass, int32_t* next_id,
                              uint8_t* changed, Stats* st) except -1 nogil:
    """Phase 3, after the segment moves: partition the instances of each thing class
    anew by GAEC on their nodes; returns the number of nodes that changed cluster.

    The contraction on superpixels may join two touching instances of one class early,
    across a boundary whose local edges attract while the long-range edges between the
    two repel, and no move of nodes or segments undoes such a merge; where noisy edges
    separate touching instances, it may also draw their common boundary worse than GAEC
    on the nodes. A group is a set of clusters of one partitionable class joined by
    edges (touching instances). GAEC on the group's own nodes (the edges inside the
    group, a multicut: every merge gains its edge cost) ends with sub-clusters between
    which no merge gains; the group is partitioned into them where the edges they cut add
    up to less than those its clusters cut now (so the objective drops; a group of one
    cluster: less than 0, and any cut of a cluster without a repelling edge costs at
    least 0). One GAEC over all such nodes at once: no edge joins two groups, so it is
    each group's own. At most N / SPLIT_SHARE nodes take part: groups of two or more
    clusters or of one with a repelling edge, the smallest first, then in the room left
    the clusters with a repelling edge of the groups left out, each alone, the smallest
    first.
    """
    cdef int32_t N = P.N, U = 0, i, j, c, d, r, a, b, C = clclass.size()
    cdef int64_t p, q, moved = 0, total = 0
    cdef vector[int64_t] sizes, gsize
    cdef vector[pair[int64_t, int32_t]] order
    cdef vector[int32_t] unit, mark, uniq, merged_into, root_id, grp, gcount, gid
    cdef vector[double] usum, cut, newcut
    cdef vector[int32_t] kept
    cdef vector[uint8_t] repels, take
    cdef vector[AdjMap] adj
    cdef ClusterCosts sc
    cdef Problem Q
    cdef Stats dummy
    cdef uint8_t one = 1
    # per thing cluster: its size, whether an edge inside it repels; the groups as a
    # union-find forest over the clusters (``grp``)
    _fill_u8(repels, C, 0)
    sizes.assign(C, 0)
    grp.resize(C)
    for c in range(C):
        grp[c] = c
    for i in range(N):
        c = cl[i]
        if not P.part[clclass[c]]:
            continue
        sizes[c] += 1
        for p in range(g.off[i], g.off[i + 1]):
            d = cl[g.nbr[p]]
            if d == c:
                if g.wt[p] < 0:
                    repels[c] = 1
            elif clclass[d] == clclass[c]:
                a = _find(&grp[0], c)
                b = _find(&grp[0], d)
                if a != b:
                    grp[b] = a
    for c in range(C):
        grp[c] = _find(&grp[0], c)
    # a group takes part with two or more clusters, or one that repels: ``gcount``
    # counts a repelling cluster twice, so that either makes it at least 2
    gsize.assign(C, 0)
    _fill_i32(gcount, C, 0)
    for c in range(C):
        if sizes[c] > 0:
            gsize[grp[c]] += sizes[c]
            gcount[grp[c]] += 2 if repels[c] else 1
    for c in range(C):
        if sizes[c] > 0 and grp[c] == c and gcount[c] >= 2:
            order.push_back(pair[int64_t, int32_t](gsize[c], c))
    # at most N / SPLIT_SHARE nodes, the smallest groups first: where thing classes
    # cover most of the image the multicut would cost more than plain GAEC on it all
    sort(order.begin(), order.end())
    _fill_u8(take, C, 0)
    for q in range(<int64_t>order.size()):
        c = order[q].second
        st.split_candidates += gsize[c]
        if total + gsize[c] <= N // SPLIT_SHARE:
            take[c] = 1
            total += gsize[c]
    # gid[c]: the group that cluster c takes part in (-1: none); the repelling clusters
    # of the groups left out take part alone
    _fill_i32(gid, C, -1)
    order.clear()
    for c in range(C):
        if sizes[c] > 0:
            if take[grp[c]]:
                gid[c] = grp[c]
            elif repels[c]:
                order.push_back(pair[int64_t, int32_t](sizes[c], c))
    sort(order.begin(), order.end())
    for q in range(<int64_t>order.size()):
        c = order[q].second
        if total + sizes[c] <= N // SPLIT_SHARE:
            gid[c] = c
            total += sizes[c]
    st.split_nodes = total
    _fill_i32(unit, N, -1)
    for i in range(N):
        if gid[cl[i]] >= 0:
            unit[i] = U
            U += 1
    if U < 2:
        return 0
    adj.resize(U)
    _fill_i32(mark, U, -1)
    for i in range(N):
        if unit[i] < 0:
            continue
        r = gid[cl[i]]
        uniq.clear(); usum.clear()
        for p in range(g.off[i], g.off[i + 1]):
            j = g.nbr[p]
            if gid[cl[j]] == r:   # r >= 0: j takes part too
                _add_pull(mark, uniq, usum, unit[j], g.wt[p])
        adj[unit[i]].reserve(uniq.size())
        for q in range(<int64_t>uniq.size()):
            adj[unit[i]].slot(uniq[q])[0] = usum[q]
            mark[uniq[q]] = -1
    # one class, partitionable, no class costs: GAEC is then a multicut's
    Q.N = U; Q.K = 1; Q.part = &one
    sc.costs.assign(U, 0.0)
    sc.best.assign(U, 0.0)
    sc.second.assign(U, INFINITY)
    _fill_i32(sc.argbest, U, 0)
    dummy.merges = dummy.heap_pops = dummy.clusters_after_gaec = 0
    _gaec(Q, U, sc, adj, merged_into, False, &dummy)
    # per group: the edges inside it that its clusters cut now, and that GAEC's cut
    cut.assign(C, 0.0)
    newcut.assign(C, 0.0)
    for i in range(N):
        if unit[i] < 0:
            continue
        r = merged_into[unit[i]]
        a = gid[cl[i]]
        for p in range(g.off[i], g.off[i + 1]):
            j = g.nbr[p]
            if j > i and gid[cl[j]] == a:
                if merged_into[unit[j]] != r:
                    newcut[a] += g.wt[p]
                if cl[j] != cl[i]:
                    cut[a] += g.wt[p]
    # the groups that GAEC's partition improves take it: a sub-cluster keeps the id of
    # the cluster of its first node where no other sub-cluster took it first
    _fill_i32(root_id, U, -1)
    _fill_i32(kept, C, -1)   # >= 0: c's own id went to a sub-cluster
    for i in range(N):
        if unit[i] < 0:
            continue
        c = cl[i]
        a = gid[c]
        if not newcut[a] < cut[a] - GAIN_EPS * (1.0 + abs(cut[a])):
            continue
        r = merged_into[unit[i]]
        if root_id[r] < 0:
            if kept[c] < 0:
                kept[c] = r
                root_id[r] = c
            else:
                root_id[r] = _new_cluster(clclass, kept, NULL, next_id, clclass[c])
        if root_id[r] != c:
            cl[i] = root_id[r]
            moved += 1
            _mark_around(g, i, changed, 1)
    return moved


cdef cppclass FlowGraph:
    # A minimum s-t cut on n nodes, the source n and the sink n + 1, as a residual
    # graph: arcs in pairs (a, a ^ 1) of opposite direction, residual capacity cap[a];
    # the arcs leaving node v are head[v], nxt[head[v]], ... (-1 ends the list).
    vector[int32_t] head
    vector[int32_t] nxt
    vector[int32_t] to
    vector[double] cap
    vector[int32_t] level
    vector[int32_t] it
    vector[int32_t] queue
    vector[int32_t] path


cdef int _flow_reset(FlowGraph& F, int32_t n) except -1 nogil:
    _fill_i32(F.head, n + 2, -1)
    F.nxt.clear(); F.to.clear(); F.cap.clear()


cdef inline int _flow_arc(FlowGraph& F, int32_t a, int32_t b, double c_ab,
                          double c_ba) except -1 nogil:
    F.to.push_back(b); F.cap.push_back(c_ab); F.nxt.push_back(F.head[a])
    F.head[a] = <int32_t>F.to.size() - 1
    F.to.push_back(a); F.cap.push_back(c_ba); F.nxt.push_back(F.head[b])
    F.head[b] = <int32_t>F.to.size() - 1


cdef int _flow_levels(FlowGraph& F, int32_t s) except -1 nogil:
    # breadth-first distances from s along arcs with residual capacity above FLOW_EPS
    cdef size_t h = 0
    cdef int32_t v, a, w
    _fill_i32(F.level, F.head.size(), -1)
    F.queue.clear()
    F.level[s] = 0
    F.queue.push_back(s)
    while h < F.queue.size():
        v = F.queue[h]
        h += 1
        a = F.head[v]
        while a >= 0:
            w = F.to[a]
            if F.cap[a] > FLOW_EPS and F.level[w] < 0:
                F.level[w] = F.level[v] + 1
                F.queue.push_back(w)
            a = F.nxt[a]


cdef int _max_flow(FlowGraph& F) except -1 nogil:
    """Dinic's maximum flow from the source to the sink; afterwards ``level[v] >= 0``
    marks the source side of a minimum cut (the nodes the residual graph reaches)."""
    cdef int32_t s = <int32_t>F.head.size() - 2, t = s + 1, v, a
    cdef size_t k
    cdef double b
    while True:
        _flow_levels(F, s)
        if F.level[t] < 0:
            return 0
        F.it.assign(F.head.begin(), F.head.end())
        F.path.clear()
        v = s
        while True:
            if v == t:
                # augment along the path by its bottleneck, then go on from the tail of
                # its first saturated arc
                b = INFINITY
                for k in range(F.path.size()):
                    if F.cap[F.path[k]] < b:
                        b = F.cap[F.path[k]]
                for k in range(F.path.size()):
                    a = F.path[k]
                    F.cap[a] -= b
                    F.cap[a ^ 1] += b
                k = 0
                while k < F.path.size() and F.cap[F.path[k]] > FLOW_EPS:
                    k += 1
                F.path.resize(k)
                v = s if k == 0 else F.to[F.path[k - 1]]
                continue
            a = F.it[v]
            while a >= 0 and not (F.cap[a] > FLOW_EPS and F.level[F.to[a]] == F.level[v] + 1):
                a = F.nxt[a]
            F.it[v] = a
            if a >= 0:
                F.path.push_back(a)
                v = F.to[a]
            elif v == s:
                break
            else:
                # a dead end in this phase: back to the arc's tail, past that arc
                F.level[v] = -1
                a = F.path.back()
                F.path.pop_back()
                v = F.to[a ^ 1]
                F.it[v] = F.nxt[F.it[v]]


cdef cppclass SwapWork:
    # the buffers of one swap: its cut, and per band node the cost at B minus at A (with
    # the terms of the fixed nodes and the bounds), the attracting edges to the other
    # side, the side the cut gives (1: B)
    FlowGraph F
    vector[double] t
    vector[double] cutw
    vector[uint8_t] side


cdef int64_t _swap_cut(const Problem& P, const NodeGraph& g, vector[int32_t]& cl,
                       const vector[int32_t]& clclass, int32_t A, int32_t B,
                       const vector[int32_t]& S, const vector[int32_t]& loc, SwapWork& W,
                       uint8_t* changed, Stats* st) except -1 nogil:
    """The swap of clusters A and B on the band nodes ``S`` (``loc[S[x]] == x``, -1
    elsewhere): the cut, taken where the exact change of the objective is below
    -GAIN_EPS; returns the number of nodes moved (see ``_swap_moves``)."""
    cdef int32_t n = <int32_t>S.size(), kA = clclass[A], kB = clclass[B], i, j, u, v, x, y
    cdef int32_t ci, cj
    cdef int64_t p, moved = 0
    cdef double w, delta
    cdef bint stable, any_change
    _flow_reset(W.F, n)
    W.t.resize(n)
    W.cutw.assign(n, 0.0)
    # a tie keeps the current side
    for x in range(n):
        i = S[x]
        W.t[x] = P.nc[i * P.s0 + kB * P.s1] - P.nc[i * P.s0 + kA * P.s1]
        W.t[x] += SWAP_BIAS if cl[i] == A else -SWAP_BIAS
    for x in range(n):
        i = S[x]
        ci = cl[i]
        for p in range(g.off[i], g.off[i + 1]):
            j = g.nbr[p]
            w = g.wt[p]
            y = loc[j]
            if y < 0:
                if cl[j] == A:
                    W.t[x] += w    # cut if i goes to B
                elif cl[j] == B:
                    W.t[x] -= w
            elif y > x:
                if w > 0:
                    _flow_arc(W.F, x, y, w, w)
                    if cl[j] != ci:
                        W.cutw[x] += w
                        W.cutw[y] += w
                elif w < 0 and cl[j] != ci:
                    # each end keeps its side by -w (the bound of w [x_i != x_j])
                    if ci == A:
                        W.t[x] -= w; W.t[y] += w
                    else:
                        W.t[x] += w; W.t[y] -= w
    # Moving a set C of these nodes changes the bound by at least the sum over C of (the
    # node's margin for its side - its attracting edges to the other side), so where no
    # node's margin is below those edges nothing can gain: no cut.
    stable = True
    for x in range(n):
        if W.t[x] > 0:
            _flow_arc(W.F, n, x, W.t[x], 0.0)     # source side: A
        elif W.t[x] < 0:
            _flow_arc(W.F, x, n + 1, -W.t[x], 0.0)
        w = W.t[x]
        if cl[S[x]] == B:
            w = -w
        if w < W.cutw[x]:
            stable = False
    if stable:
        return 0
    _max_flow(W.F)
    W.side.resize(n)
    any_change = False
    for x in range(n):
        W.side[x] = W.F.level[x] < 0    # 1: B
        if W.side[x] != (cl[S[x]] == B):
            any_change = True
    if not any_change:
        return 0
    # the exact change of the objective
    delta = 0.0
    for x in range(n):
        i = S[x]
        ci = cl[i]
        u = B if W.side[x] else A
        if u == ci:
            continue
        delta += P.nc[i * P.s0 + clclass[u] * P.s1] - P.nc[i * P.s0 + clclass[ci] * P.s1]
        for p in range(g.off[i], g.off[i + 1]):
            j = g.nbr[p]
            y = loc[j]
            cj = cl[j]
            if y >= 0:
                v = B if W.side[y] else A
                if v != cj and y < x:
                    continue   # both moved: counted from the one first in S
            else:
                v = cj
            delta += g.wt[p] * (<int32_t>(u != v) - <int32_t>(ci != cj))
    if not delta < -GAIN_EPS:
        return 0
    for x in range(n):
        i = S[x]
        u = B if W.side[x] else A
        if u != cl[i]:
            cl[i] = u
            _mark_around(g, i, changed, 1)
            moved += 1
    st.swap_moves += 1
    return moved


cdef int64_t _swap_moves(const Problem& P, const NodeGraph& g, vector[int32_t]& cl,
                         const vector[int32_t]& clclass, int32_t hops, uint8_t* changed,
                         Stats* st) except -1 nogil:
    """Phase 3, after the splits: swaps between two touching clusters by a minimum cut;
    returns the number of nodes that changed cluster.

    For every two clusters A and B that touch along a local edge (in the order of their
    ids), the nodes of A or B within ``hops`` local edges of their common boundary
    choose between A and B at once: an alpha-beta swap. With the rest fixed, the
    objective restricted to these nodes is their class costs, the edges to the fixed
    nodes of A and B (unary terms) and ``w [x_i != x_j]`` on the edges between them;
    an attracting edge is an arc of the cut, a repelling one is replaced by a bound that
    equals it at the current labelling (unary: each end keeps its side by -w), so the
    cut never raises the objective (majorise-minimise). A swap is taken where the exact
    change is below -GAIN_EPS. It moves many nodes together where each alone loses: a
    part of an instance that belongs to the region around it, a tongue of one region
    reaching into the next, a boundary shifted along its length. Pairs are taken while
    their bands hold at most SWAP_SHARE * N nodes in all (``st.swap_band_nodes``): on
    grids far fewer, on graphs whose local edges reach everywhere within a few steps a
    band is two whole clusters.
    """
    cdef int32_t N = P.N, i, j, A, B, h
    cdef int64_t p, key, moved = 0, work = 0, C = clclass.size()
    cdef size_t q, q0, q1, h0, h1
    cdef bint hasA, hasB
    cdef vector[pair[int64_t, int32_t]] bnd
    cdef vector[int32_t] loc, S
    cdef SwapWork W
    _touching_pairs(P, cl, C, NULL, NULL, 0, bnd)
    _fill_i32(loc, N, -1)
    q0 = 0
    while q0 < bnd.size() and work <= <int64_t>SWAP_SHARE * N:
        key = bnd[q0].first
        q1 = q0
        while q1 < bnd.size() and bnd[q1].first == key:
            q1 += 1
        A = <int32_t>(key // C)
        B = <int32_t>(key % C)
        # the boundary nodes still in A or B (earlier swaps move some), then the band
        S.clear()
        hasA = hasB = False
        for q in range(q0, q1):
            i = bnd[q].second
            if loc[i] < 0 and (cl[i] == A or cl[i] == B):
                loc[i] = <int32_t>S.size()
                S.push_back(i)
                if cl[i] == A:
                    hasA = True
                else:
                    hasB = True
        q0 = q1
        if hasA and hasB:
            h0 = 0
            for h in range(hops):
                h1 = S.size()
                for q in range(h0, h1):
                    i = S[q]
                    for p in range(g.off[i], g.off[i + 1]):
                        j = g.nbr[p]
                        if g.loc[p] and loc[j] < 0 and (cl[j] == A or cl[j] == B):
                            loc[j] = <int32_t>S.size()
                            S.push_back(j)
                h0 = h1
            work += S.size()
            moved += _swap_cut(P, g, cl, clclass, A, B, S, loc, W, changed, st)
        for q in range(S.size()):
            loc[S[q]] = -1
    st.swap_nodes += moved
    st.swap_band_nodes += work
    return moved


cdef int _local_parts(const Problem& P, const vector[int32_t]& cl, const int32_t* within,
                      vector[int32_t]& root) except -1 nogil:
    """The connected parts, along local edges, of the clusters of ``cl`` (split further by
    the partition ``within``, or NULL): ``root[i]`` is the root node of node i's part."""
    cdef int32_t i, u, v, ru, rv
    cdef int64_t e
    root.resize(P.N)
    for i in range(P.N):
        root[i] = i
    for e in range(P.E):
        if not P.local[e]:
            continue
        u = P.edges[2 * e]; v = P.edges[2 * e + 1]
        if cl[u] == cl[v] and (within == NULL or within[u] == within[v]):
            ru = _find(&root[0], u)
            rv = _find(&root[0], v)
            if ru != rv:
                root[rv] = ru
    for i in range(P.N):
        root[i] = _find(&root[0], i)


cdef int64_t _segment_moves(const Problem& P, const NodeGraph& g, vector[int32_t]& cl,
                            vector[int32_t]& clclass, int32_t M, int32_t* next_id,
                            int32_t max_size, uint8_t* changed, Stats* st) except -1 nogil:
    """Phase 3, last: moves of whole segments; returns the number of nodes moved.

    A segment is a connected part (along local edges) of one cluster; one of at most
    ``max_size`` nodes moves as a whole to a neighbouring cluster (taking its class), to
    the cluster of a non-partitionable class or to a new cluster of a partitionable
    class, whichever lowers the objective most. Each of its nodes alone may be held
    back by the edges inside it: an island of a class that no cluster around it has,
    or an instance fragment on the wrong side. A larger segment is tried too when it
    is not its cluster's largest (a stuff cluster holds every region of its class, and
    a region that the contraction gave the wrong class is a part of it joined to the
    rest by long-range edges only, where the boundary moves cannot shift it whole); it
    may only join a neighbouring cluster, so only those clusters' classes are summed
    over its nodes. Segments are visited once, in order of their first node;
    ``changed`` marks the moved nodes and their neighbours.
    """
    cdef int32_t N = P.N, K = P.K, i, ru, s, S = 0, c, X, kx, k, tgt, kt, n
    cdef int64_t p, q, m, moved = 0
    cdef double cur, bestc, cand, wx, sk
    cdef bint big
    cdef vector[int32_t] root, size, seg, soff, members, lcl, lmark, largest, kmark
    cdef vector[double] row, lw
    _local_parts(P, cl, NULL, root)
    _fill_i32(size, N, 0)
    for i in range(N):
        size[root[i]] += 1
    # each cluster's largest part (of equal ones, the first found)
    _fill_i32(largest, clclass.size(), -1)
    for i in range(N):
        if root[i] == i:
            c = cl[i]
            if largest[c] < 0 or size[i] > size[largest[c]]:
                largest[c] = i
    # number the segments by first node, their members in node order
    _fill_i32(seg, N, -1)
    soff.push_back(0)
    for i in range(N):
        ru = root[i]
        if seg[ru] < 0 and (size[ru] <= max_size or largest[cl[ru]] != ru):
            seg[ru] = S
            S += 1
            soff.push_back(soff[S - 1] + size[ru])
    if S == 0:
        return 0
    members.resize(soff[S])
    for s in range(S):
        size[s] = soff[s]   # reused as fill pointers
    for i in range(N):
        s = seg[root[i]]
        if s >= 0:
            members[size[s]] = i
            size[s] += 1
    for i in range(N):
        seg[i] = seg[root[i]]
    root.clear(); root.shrink_to_fit()
    row.resize(K)
    _fill_i32(kmark, K, 0)
    _fill_i32(lmark, clclass.size(), -1)
    for s in range(S):
        X = cl[members[soff[s]]]
        kx = clclass[X]
        # edge costs from the segment to each cluster around it (its own: the rest of X)
        lcl.clear(); lw.clear()
        for m in range(soff[s], soff[s + 1]):
            n = members[m]
            for p in range(g.off[n], g.off[n + 1]):
                i = g.nbr[p]
                if seg[i] != s:
                    _add_pull(lmark, lcl, lw, cl[i], g.wt[p])
        big = soff[s + 1] - soff[s] > max_size
        if big:
            # the own class and the neighbouring clusters' classes only
            kmark[kx] = 1
            for q in range(<int64_t>lcl.size()):
                kmark[clclass[lcl[q]]] = 1
            for k in range(K):
                if kmark[k]:
                    sk = 0.0
                    for m in range(soff[s], soff[s + 1]):
                        sk += P.nc[members[m] * P.s0 + k * P.s1]
                    row[k] = sk
                    kmark[k] = 0
        else:
            for k in range(K):
                row[k] = 0.0
            for m in range(soff[s], soff[s + 1]):
                n = members[m]
                for k in range(K):
                    row[k] += P.nc[n * P.s0 + k * P.s1]
        wx = lw[lmark[X]] if lmark[X] >= 0 else 0.0
        cur = row[kx] - wx
        bestc = cur - 1e-9 * (1.0 + abs(cur))
        tgt = -1; kt = -1
        for q in range(<int64_t>lcl.size()):
            c = lcl[q]
            if c != X and row[clclass[c]] - lw[q] < bestc:
                bestc = row[clclass[c]] - lw[q]; tgt = c; kt = clclass[c]
        for k in range(K if not big else 0):
            if P.part[k]:
                cand = row[k]
                c = -2
            else:
                c = M + k
                if c == X:
                    continue
                cand = row[k] - (lw[lmark[c]] if lmark[c] >= 0 else 0.0)
            if cand < bestc:
                bestc = cand; tgt = c; kt = k
        for q in range(<int64_t>lcl.size()):
            lmark[lcl[q]] = -1
        if tgt == -1:
            continue
        if tgt == -2:
            tgt = _new_cluster(clclass, lmark, NULL, next_id, kt)
        for m in range(soff[s], soff[s + 1]):
            n = members[m]
            cl[n] = tgt
            _mark_around(g, n, changed, 1)
        moved += soff[s + 1] - soff[s]
    st.segment_moves += moved
    return moved


cdef int _segments(const Problem& P, const vector[int32_t]& cl,
                    const vector[int32_t]& clclass, int32_t* out_labels,
                    int32_t* out_segments, uint8_t* out_cut) except -1 nogil:
    """Phase 4: segments are the connected components of the uncut edges, numbered by
    first appearance."""
    cdef int32_t N = P.N, i, u, v, ru, rv, r, nseg = 0
    cdef int64_t e
    cdef vector[int32_t] parent, segid
    parent.resize(N)
    for i in range(N):
        parent[i] = i
    for e in range(P.E):
        u = P.edges[2 * e]; v = P.edges[2 * e + 1]
        if cl[u] == cl[v]:
            ru = _find(&parent[0], u)
            rv = _find(&parent[0], v)
            if ru != rv:
                if ru < rv:
                    parent[rv] = ru
                else:
                    parent[ru] = rv
    _fill_i32(segid, N, -1)
    for i in range(N):
        r = _find(&parent[0], i)
        if segid[r] < 0:
            segid[r] = nseg
            nseg += 1
        out_segments[i] = segid[r]
        out_labels[i] = clclass[cl[i]]
    for e in range(P.E):
        out_cut[e] = out_segments[P.edges[2 * e]] != out_segments[P.edges[2 * e + 1]]


cdef int32_t _partition_costs(const Problem& P, const vector[int32_t]& cl, vector[int32_t]& cid,
                              ClusterCosts& cc, const int32_t* coarse,
                              const double* coarse_rows) except -1 nogil:
    """Number the clusters of ``cl`` 0..C-1 by first node (``cid``), sum their nodes' cost
    rows into ``cc`` and return C.

    ``coarse`` (or NULL): a coarser partition (per node) whose cost rows, summed in the
    same way, are ``coarse_rows``; a cluster that is a whole coarse cluster takes that
    row instead of summing its nodes again (the same sums).
    """
    cdef int32_t N = P.N, K = P.K, C = 0, i, k, c, i0, i1, k0, k1, a, nco = 0
    cdef vector[int32_t] ren, first
    cdef vector[uint8_t] whole
    cdef double* rr
    cdef double* row
    _fill_i32(ren, clsize_cap(cl), -1)
    cid.resize(N)
    for i in range(N):
        c = cl[i]
        if ren[c] < 0:
            ren[c] = C
            C += 1
        cid[i] = ren[c]
    cc.costs.clear(); cc.costs.resize(<size_t>C * K, 0.0)
    cc.best.resize(C); cc.second.resize(C); cc.argbest.resize(C)
    rr = &cc.costs[0]
    if coarse != NULL:
        # a coarse cluster is whole when all its nodes are in one cluster of ``cl``
        for i in range(N):
            if coarse[i] >= nco:
                nco = coarse[i] + 1
        _fill_i32(first, nco, -1)
        _fill_u8(whole, nco, 1)
        for i in range(N):
            a = coarse[i]
            if first[a] < 0:
                first[a] = cid[i]
            elif first[a] != cid[i]:
                whole[a] = 0
        for a in range(nco):
            if whole[a] and first[a] >= 0:
                row = rr + <int64_t>first[a] * K
                for k in range(K):
                    row[k] = coarse_rows[<int64_t>a * K + k]
    if P.s1 == 1:
        for i in range(N):
            if coarse != NULL and whole[coarse[i]]:
                continue
            for k in range(K):
                rr[<int64_t>cid[i] * K + k] += P.nc[i * P.s0 + k]
    else:
        # class-major input, in blocks of nodes and of 8 classes: neighbouring nodes
        # mostly share a cluster, and adding 8 classes per node keeps 8 independent sums
        # in flight where one class at a time would wait on the previous add to the same
        # sum (each sum still adds its nodes in increasing order: the same result)
        for i0 in range(0, N, 256):
            i1 = i0 + 256 if i0 + 256 < N else N
            for k0 in range(0, K, 8):
                k1 = k0 + 8 if k0 + 8 < K else K
                for i in range(i0, i1):
                    if coarse != NULL and whole[coarse[i]]:
                        continue
                    row = rr + <int64_t>cid[i] * K
                    for k in range(k0, k1):
                        row[k] += P.nc[i * P.s0 + k * P.s1]
    for c in range(C):
        _update_best(rr + <int64_t>c * K, K, &cc.best[c], &cc.second[c], &cc.argbest[c])
    return C


cdef inline size_t clsize_cap(const vector[int32_t]& cl) noexcept nogil:
    cdef int32_t m = 0
    cdef size_t i
    for i in range(cl.size()):
        if cl[i] > m:
            m = cl[i]
    return <size_t>m + 1


cdef int _piece_moves(const Problem& P, int32_t M, const vector[int32_t]& cid,
                      const NodeGraph& g, const NodeGraph& sg, const TopClasses& node_top,
                      vector[int32_t]& cl, vector[int32_t]& clclass, vector[int32_t]& clsize,
                      int32_t* next_id, int32_t max_rounds, const double* sprows,
                      bint settled, Stats* st) except -1 nogil:
    """Moves of the pieces that node moves cut the superpixels into, then node moves.

    A piece is a connected part of a superpixel within one cluster (local edges).
    ``sprows`` (or NULL): the superpixels' cost rows as ``_partition_costs`` sums them; a
    superpixel that no node left is one piece with that row. ``settled``: the node moves
    before ran to the end, so no node moves again unless the pieces changed the clusters
    around it.
    """
    cdef int32_t N = P.N, i, C, a, s
    cdef vector[int32_t] root, pid, pcl, coarse_of, unit_of
    cdef TopClasses ptop
    cdef ClusterCosts pc
    cdef NodeGraph pg
    cdef vector[AdjMap] no_maps
    _local_parts(P, cl, &cid[0], root)
    cdef const int32_t* coarse = NULL
    if sprows != NULL:
        coarse = &cid[0]
    C = _partition_costs(P, root, pid, pc, coarse, sprows)
    root.clear(); root.shrink_to_fit()
    # the pieces that are whole superpixels, and which superpixel each is
    _fill_i32(coarse_of, C, -2)
    _fill_i32(unit_of, M, -2)
    for i in range(N):
        a = pid[i]; s = cid[i]
        if coarse_of[a] == -2:
            coarse_of[a] = s
        elif coarse_of[a] != s:
            coarse_of[a] = -1
        if unit_of[s] == -2:
            unit_of[s] = a
        elif unit_of[s] != a:
            unit_of[s] = -1
    for a in range(C):
        if coarse_of[a] >= 0 and unit_of[coarse_of[a]] != a:
            coarse_of[a] = -1
    _region_graph(P, C, pid, g, no_maps, pg, False, &sg, &coarse_of[0], &unit_of[0])
    pcl.resize(C)
    for i in range(N):
        pcl[pid[i]] = cl[i]
    _top_classes(&pc.costs[0], P.K, 1, C, P.K, ptop)
    _count(pcl, clsize)
    _improve(&pc.costs[0], P.K, 1, C, P.K, P.part, M, ptop, pg, pcl, clclass, clsize,
             next_id, <int64_t>max_rounds * C, NULL, st)
    cdef vector[uint8_t] changed
    if settled:
        _fill_u8(changed, N, 0)
    for i in range(N):
        if settled and cl[i] != pcl[pid[i]]:
            _mark_around(g, i, &changed[0], 1)
        cl[i] = pcl[pid[i]]
    _count(cl, clsize)
    _improve(P.nc, P.s0, P.s1, N, P.K, P.part, M, node_top, g, cl, clclass, clsize,
             next_id, <int64_t>max_rounds * N, &changed[0] if settled else NULL, st)


cdef int _solve_core(const Problem& P, double pre_thr, int32_t pre_max, int32_t pre_max_thing,
                     double pre_margin,
                     bint improve,
                     int32_t max_rounds, bint sp_moves, bint piece_moves,
                     int32_t kl_moves, int32_t seg_max, bint splits, int32_t swap_hops,
                     int32_t* out_labels,
                     int32_t* out_segments, uint8_t* out_cut, Stats* st) except -1 nogil:
    """The whole solve, phase by phase; every buffer is owned by a vector."""
    cdef double t0 = _now(), t1
    cdef int32_t M, i, next_id
    cdef int64_t moves
    cdef bint settled
    cdef ClusterCosts cc
    cdef NodeGraph g, sg
    cdef vector[int32_t] parent, cid, merged_into, spcl, cl, clclass, clsize
    cdef TopClasses node_top, sp_top
    cdef vector[double] sprows
    cdef vector[AdjMap] adj
    cdef vector[uint8_t] changed

    if pre_margin >= 0 and pre_max > 1:
        # class-agreement superpixels: node classes first, cost rows summed afterwards
        _node_best(P, cc, node_top)
        _precluster(P, pre_thr, pre_max, pre_max_thing, pre_margin, cc, parent)
        cl.resize(P.N)
        for i in range(P.N):
            cl[i] = _find(&parent[0], i)
        t1 = _now(); st.t_precluster = t1 - t0; t0 = t1
        M = _partition_costs(P, cl, cid, cc, NULL, NULL)
    else:
        _load_costs(P, cc)
        if improve:
            _top_classes(P.nc, P.s0, P.s1, P.N, P.K, node_top)
        _precluster(P, pre_thr, pre_max, pre_max_thing, pre_margin, cc, parent)
        t1 = _now(); st.t_precluster = t1 - t0; t0 = t1
        M = _compact(P, parent, cc, cid)
    st.superpixels = M
    parent.clear(); parent.shrink_to_fit()
    _node_graph(P, g)
    _region_graph(P, M, cid, g, adj, sg, True, NULL, NULL, NULL)
    sp_moves = sp_moves and improve and pre_max > 1
    if sp_moves:
        # the superpixels' own cost rows, before the contraction sums them into clusters
        sprows.assign(cc.costs.begin(), cc.costs.begin() + <int64_t>M * P.K)
        _top_classes(&sprows[0], P.K, 1, M, P.K, sp_top)
    t1 = _now(); st.t_rag = t1 - t0; t0 = t1

    # ordered by edge cost only where there are superpixels (see ``_order``): on
    # single nodes (no local edge contracted) by gain, as plain GAEC
    _gaec(P, M, cc, adj, merged_into, pre_max > 1 and pre_margin >= 0 and M < P.N, st)
    adj.clear(); adj.shrink_to_fit()
    t1 = _now(); st.t_gaec = t1 - t0; t0 = t1

    _cluster_ids(P, M, merged_into, cc, spcl, clclass)
    merged_into.clear(); merged_into.shrink_to_fit()
    cc.costs.clear(); cc.costs.shrink_to_fit()
    cl.resize(P.N)
    for i in range(P.N):
        cl[i] = spcl[cid[i]]
    st.objective_before_improve = _objective(P, cl, clclass)
    next_id = M + P.K
    clsize.resize(clclass.size())
    if sp_moves:
        _count(spcl, clsize)
        _improve(&sprows[0], P.K, 1, M, P.K, P.part, M, sp_top, sg, spcl, clclass, clsize,
                 &next_id, <int64_t>max_rounds * M, NULL, st)
        for i in range(P.N):
            cl[i] = spcl[cid[i]]
    if improve and P.N > 0:
        _count(cl, clsize)
        moves = st.improve_moves
        settled = _improve(P.nc, P.s0, P.s1, P.N, P.K, P.part, M, node_top, g, cl, clclass,
                           clsize, &next_id, <int64_t>max_rounds * P.N, NULL, st)
        # pieces differ from the superpixels only where nodes moved
        if piece_moves and pre_max > 1 and st.improve_moves > moves:
            # the class-agreement superpixels' rows are summed as the pieces' are
            _piece_moves(P, M, cid, g, sg, node_top, cl, clclass, clsize, &next_id, max_rounds,
                         &sprows[0] if sp_moves and pre_margin >= 0 else NULL, settled, st)
    t1 = _now(); st.t_improve = t1 - t0; t0 = t1
    if (improve and (kl_moves > 0 or seg_max > 0 or splits or swap_hops > 0) and pre_max > 1
            and P.N > 0):
        # boundary and segment moves, splits and swaps, then node moves where they
        # changed the clusters
        _fill_u8(changed, P.N, 0)
        moves = 0
        if kl_moves > 0:
            moves += _boundary_moves(P, g, node_top, cl, clclass, M, &next_id, kl_moves,
                                     max_rounds, &changed[0], st)
        t1 = _now(); st.t_boundary = t1 - t0; t0 = t1
        if seg_max > 0:
            moves += _segment_moves(P, g, cl, clclass, M, &next_id, seg_max, &changed[0], st)
        t1 = _now(); st.t_segments = t1 - t0; t0 = t1
        if splits:
            st.split_moves = _instance_splits(P, g, cl, clclass, &next_id, &changed[0], st)
            moves += st.split_moves
        t1 = _now(); st.t_splits = t1 - t0; t0 = t1
        if swap_hops > 0:
            moves += _swap_moves(P, g, cl, clclass, swap_hops, &changed[0], st)
        t1 = _now(); st.t_swaps = t1 - t0; t0 = t1
        if moves > 0:
            clsize.resize(clclass.size())
            _count(cl, clsize)
            _improve(P.nc, P.s0, P.s1, P.N, P.K, P.part, M, node_top, g, cl, clclass,
                     clsize, &next_id, <int64_t>max_rounds * P.N, &changed[0], st)
        t1 = _now(); st.t_boundary += t1 - t0; t0 = t1

    _segments(P, cl, clclass, out_labels, out_segments, out_cut)
    t1 = _now(); st.t_output = t1 - t0


def solve(const double[:, :] node_costs, const int32_t[:, ::1] edges,
          const double[::1] edge_costs, const uint8_t[::1] partitionable,
          const uint8_t[::1] local_edges, double precluster_threshold,
          int precluster_max_size, int precluster_max_thing_size,
          double precluster_margin, bint improve, int max_improve_rounds,
          bint superpixel_moves, bint piece_moves, int boundary_moves, int segment_moves,
          bint instance_splits, int swap_moves, int32_t[::1] labels, int32_t[::1] segments, uint8_t[::1] edge_cut):
    """Solve one AMWC problem; fill ``labels``, ``segments`` and ``edge_cut`` in place.

    Preconditions (checked by :func:`copsctl.solver.solve_amwc`, not here): N >= 1,
    K >= 1, finite costs, edge endpoints in [0, N) and distinct, arrays C-contiguous
    except ``node_costs``, which may have any strides (a class-major network output
    needs no copy),
    ``partitionable`` of length K, ``local_edges`` (E,) flags of the edges eligible for
    pre-clustering, outputs of lengths N, N and E; the other arguments are the fields of
    :class:`copsctl.solver.SolverOptions`. Returns a dict of timings and counts. The GIL
    is released for the whole computation.
    """
    cdef Stats st
    st.t_precluster = st.t_rag = st.t_gaec = st.t_improve = st.t_output = 0.0
    st.superpixels = st.clusters_after_gaec = st.merges = st.heap_pops = 0
    st.improve_moves = st.improve_visits = st.boundary_moves = 0
    st.t_boundary = st.t_segments = st.t_splits = 0.0
    st.segment_moves = st.split_moves = st.split_candidates = st.split_nodes = 0
    st.objective_before_improve = 0.0
    st.swap_moves = st.swap_nodes = st.swap_band_nodes = 0
    st.t_swaps = 0.0
    cdef Problem P
    P.N = node_costs.shape[0]
    P.K = node_costs.shape[1]
    P.E = edges.shape[0]
    P.nc = &node_costs[0, 0]
    P.s0 = node_costs.strides[0] // sizeof(double)
    P.s1 = node_costs.strides[1] // sizeof(double)
    P.edges = &edges[0, 0] if P.E > 0 else NULL
    P.ec = &edge_costs[0] if P.E > 0 else NULL
    P.part = &partitionable[0]
    P.local = &local_edges[0] if P.E > 0 else NULL
    cdef uint8_t* cutp = &edge_cut[0] if P.E > 0 else NULL
    with nogil:
        _solve_core(P, precluster_threshold, precluster_max_size, precluster_max_thing_size,
                    precluster_margin, improve, max_improve_rounds,
                    superpixel_moves, piece_moves, boundary_moves, segment_moves,
                    instance_splits, swap_moves, &labels[0], &segments[0], cutp, &st)
    return {
        "seconds_precluster": st.t_precluster,
        "seconds_rag": st.t_rag,
        "seconds_gaec": st.t_gaec,
        "seconds_improve": st.t_improve,
        "seconds_boundary": st.t_boundary,
        "boundary_moves": st.boundary_moves,
        "seconds_segments": st.t_segments,
        "seconds_splits": st.t_splits,
        "segment_moves": st.segment_moves,
        "split_moves": st.split_moves,
        "split_candidates": st.split_candidates,
        "split_nodes": st.split_nodes,
        "seconds_swaps": st.t_swaps,
        "swap_moves": st.swap_moves,
        "swap_nodes": st.swap_nodes,
        "swap_band_nodes": st.swap_band_nodes,
        "seconds_output": st.t_output,
        "superpixels": st.superpixels,
        "merges": st.merges,
        "clusters_after_gaec": st.clusters_after_gaec,
        "heap_pops": st.heap_pops,
        "improve_moves": st.improve_moves,
        "improve_visits": st.improve_visits,
        "objective_before_improve": st.objective_before_improve,
    }
