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
0. Pre-clustering. Edges whose cost exceeds a threshold and whose endpoints prefer the
   same class are contracted in descending order of cost (counting sort, union-find),
   into superpixels of bounded size. Contracting such an edge is exactly what greedy
   additive edge contraction (GAEC) does first, because both endpoints keep their
   class and the gain equals the edge cost; the size bound keeps a single wrong edge
   from fusing large regions before the accumulated costs can object.
1. Region adjacency graph of the superpixels: parallel edges are summed.
2. GAEC on that graph. A cluster carries the sum of its nodes' class costs and takes
   the cheapest class. The gain of merging clusters ``a`` and ``b`` is
   ``S(a, b) - min_k (C_a[k] + C_b[k]) + w_ab``, where ``S`` is the cheapest *feasible*
   way to keep them apart: if both prefer the same non-partitionable class, one of them
   must take its second-best class, since adjacent clusters of such a class are one
   cluster. Gains are kept in a max-heap with lazy re-evaluation: a popped entry whose
   gain has dropped is pushed back with its exact value, and a final sweep re-checks
   every remaining edge so that no merge with positive gain is left.
3. Improvement. Single-node moves: a node moves to a neighbouring cluster (taking its
   class) or to a new cluster of any class when that lowers the objective; nodes next
   to a moved node are re-examined. Every move strictly lowers the objective.
4. Output. Non-partitionable classes form one cluster each; segments are the connected
   components of the uncut edges, numbered by first appearance.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.math cimport INFINITY
from libc.stdlib cimport malloc, free
from libcpp.vector cimport vector
from libcpp.unordered_map cimport unordered_map
from libcpp.utility cimport pair
from libcpp.queue cimport priority_queue
from cython.operator cimport dereference as deref, preincrement as inc
from posix.time cimport clock_gettime, timespec, CLOCK_THREAD_CPUTIME_ID

ctypedef pair[int32_t, int32_t] IntPair
ctypedef pair[double, IntPair] HeapEntry
ctypedef unordered_map[int32_t, double] AdjMap

cdef double GAIN_EPS = 1e-9


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
    double objective_before_improve


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


cdef inline double _gain(double* costs, double* best, double* second, int32_t* argbest,
                         const uint8_t* part, int32_t K, int32_t a, int32_t b,
                         double w) noexcept nogil:
    """Objective decrease of merging clusters a and b joined by total edge cost w."""
    cdef int32_t ka = argbest[a], kb = argbest[b], k
    cdef double sep, merged, v
    cdef double* ra
    cdef double* rb
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
    ra = costs + <int64_t>a * K
    rb = costs + <int64_t>b * K
    merged = INFINITY
    for k in range(K):
        v = ra[k] + rb[k]
        if v < merged:
            merged = v
    return best[a] + best[b] - merged + w


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


cdef int _solve_core(const double* nc, int64_t s0, int64_t s1, int32_t N, int32_t K,
                     const int32_t* edges, int64_t E, const double* ec, const uint8_t* part,
                     const uint8_t* local, double pre_thr, int32_t pre_max, bint improve,
                     int32_t max_rounds, int32_t* out_labels, int32_t* out_segments,
                     uint8_t* out_cut, Stats* st) except -1 nogil:
    """The whole solve; ``nc[i * s0 + k * s1]`` is the cost of class k at node i."""
    cdef double t0 = _now(), t1
    cdef int64_t e, i64
    cdef int32_t i, j, k, u, v, ru, rv, a, b, r, s, c, M
    cdef double w, g, g2
    cdef vector[int32_t] parent, size, node_arg

    # ---------------- phase 0: pre-clustering into bounded superpixels -------------
    # Cluster cost sums live in the row of the cluster's union-find root.
    cdef double* costs = <double*>malloc(<size_t>N * K * sizeof(double))
    cdef double* best = <double*>malloc(N * sizeof(double))
    cdef double* second = <double*>malloc(N * sizeof(double))
    cdef int32_t* argbest = <int32_t*>malloc(N * sizeof(int32_t))
    if costs == NULL or best == NULL or second == NULL or argbest == NULL:
        free(costs); free(best); free(second); free(argbest)
        with gil:
            raise MemoryError("AMWC solver: cannot allocate cluster costs")
    parent.resize(N)
    size.resize(N)
    node_arg.resize(N)
    cdef int32_t i0, i1
    if s1 == 1:
        for i in range(N):
            for k in range(K):
                costs[<int64_t>i * K + k] = nc[i * s0 + k]
    else:
        # class-major input: transpose in blocks of nodes so reads and writes stay cached
        for i0 in range(0, N, 64):
            i1 = i0 + 64 if i0 + 64 < N else N
            for k in range(K):
                for i in range(i0, i1):
                    costs[<int64_t>i * K + k] = nc[i * s0 + k * s1]
    for i in range(N):
        parent[i] = i
        size[i] = 1
        _update_best(costs + <int64_t>i * K, K, &best[i], &second[i], &argbest[i])
        node_arg[i] = argbest[i]

    cdef int32_t NBUCKET = 1024
    cdef vector[int64_t] bucket_start
    cdef vector[int32_t] order
    cdef double wmax, scale
    cdef int64_t nsel = 0, pos
    cdef int32_t bk
    cdef double* rr
    cdef double* rs
    if pre_max > 1 and E > 0:
        wmax = pre_thr
        for e in range(E):
            if ec[e] > wmax:
                wmax = ec[e]
        if wmax > pre_thr:
            # counting sort of the candidate edges by descending cost
            scale = (NBUCKET - 1) / (wmax - pre_thr)
            bucket_start.assign(NBUCKET + 1, 0)
            for e in range(E):
                if ec[e] > pre_thr and local[e]:
                    bk = <int32_t>((wmax - ec[e]) * scale)
                    bucket_start[bk + 1] += 1
                    nsel += 1
            for bk in range(NBUCKET):
                bucket_start[bk + 1] += bucket_start[bk]
            order.resize(nsel)
            for e in range(E):
                if ec[e] > pre_thr and local[e]:
                    bk = <int32_t>((wmax - ec[e]) * scale)
                    order[bucket_start[bk]] = <int32_t>e
                    bucket_start[bk] += 1
            for i64 in range(nsel):
                e = order[i64]
                ru = _find(&parent[0], edges[2 * e])
                rv = _find(&parent[0], edges[2 * e + 1])
                if ru == rv or size[ru] + size[rv] > pre_max:
                    continue
                if not _gain_positive(costs, best, second, argbest, part, K, ru, rv, ec[e]):
                    continue
                if size[ru] < size[rv]:
                    ru, rv = rv, ru
                parent[rv] = ru
                size[ru] += size[rv]
                rr = costs + <int64_t>ru * K
                rs = costs + <int64_t>rv * K
                for k in range(K):
                    rr[k] += rs[k]
                _update_best(rr, K, &best[ru], &second[ru], &argbest[ru])
        order.clear()
        order.shrink_to_fit()
    t1 = _now(); st.t_precluster = t1 - t0; t0 = t1

    # ---------------- phase 1: region adjacency graph ------------------------------
    cdef vector[int32_t] cid
    cid.assign(N, -1)
    M = 0
    for i in range(N):
        r = _find(&parent[0], i)
        if cid[r] < 0:
            cid[r] = M
            M += 1
        cid[i] = cid[r]
    st.superpixels = M

    # Compact the cost rows of the roots to rows 0..M-1 (a root's compact id never exceeds
    # its node index, so rows only move forward).
    for i in range(N):
        if parent[i] == i:
            a = cid[i]
            if a != i:
                for k in range(K):
                    costs[<int64_t>a * K + k] = costs[<int64_t>i * K + k]
                best[a] = best[i]; second[a] = second[i]; argbest[a] = argbest[i]

    # Node adjacency (CSR, both directions): read here for the region adjacency graph
    # and again by the improvement phase.
    cdef vector[int64_t] noff
    cdef vector[int32_t] nnbr
    cdef vector[double] nwt
    cdef vector[int64_t] fill
    noff.assign(N + 1, 0)
    for e in range(E):
        noff[edges[2 * e] + 1] += 1
        noff[edges[2 * e + 1] + 1] += 1
    for i in range(N):
        noff[i + 1] += noff[i]
    nnbr.resize(noff[N])
    nwt.resize(noff[N])
    fill.resize(N)
    for i in range(N):
        fill[i] = noff[i]
    for e in range(E):
        u = edges[2 * e]; v = edges[2 * e + 1]
        nnbr[fill[u]] = v; nwt[fill[u]] = ec[e]; fill[u] += 1
        nnbr[fill[v]] = u; nwt[fill[v]] = ec[e]; fill[v] += 1

    # Superpixel adjacency with summed parallel edges: walk each superpixel's nodes and
    # sum their edges per neighbouring superpixel with a marker array, so every map is
    # filled once with distinct keys.
    cdef vector[AdjMap] adj
    adj.resize(M)
    cdef vector[int64_t] moff
    cdef vector[int32_t] members
    moff.assign(M + 1, 0)
    for i in range(N):
        moff[cid[i] + 1] += 1
    for a in range(M):
        moff[a + 1] += moff[a]
    members.resize(N)
    for a in range(M):
        fill[a] = moff[a]
    for i in range(N):
        members[fill[cid[i]]] = i
        fill[cid[i]] += 1
    fill.clear(); fill.shrink_to_fit()
    cdef vector[int64_t] mark
    mark.assign(M, -1)
    cdef vector[int32_t] uniq
    cdef vector[double] usum
    cdef int64_t p, q, mi
    for a in range(M):
        uniq.clear(); usum.clear()
        for mi in range(moff[a], moff[a + 1]):
            i = members[mi]
            for p in range(noff[i], noff[i + 1]):
                b = cid[nnbr[p]]
                if b == a:
                    continue
                if mark[b] < 0:
                    mark[b] = uniq.size()
                    uniq.push_back(b)
                    usum.push_back(nwt[p])
                else:
                    usum[mark[b]] += nwt[p]
        adj[a].reserve(uniq.size())
        for q in range(<int64_t>uniq.size()):
            adj[a][uniq[q]] = usum[q]
            mark[uniq[q]] = -1
    moff.clear(); moff.shrink_to_fit(); members.clear(); members.shrink_to_fit()
    mark.clear(); mark.shrink_to_fit()
    t1 = _now(); st.t_rag = t1 - t0; t0 = t1

    # ---------------- phase 2: greedy additive edge contraction --------------------
    cdef priority_queue[HeapEntry] heap
    cdef vector[uint8_t] alive
    cdef vector[int32_t] merged_into
    alive.assign(M, 1)
    merged_into.resize(M)
    for a in range(M):
        merged_into[a] = a
    cdef unordered_map[int32_t, double].iterator it, it_end, f

    cdef HeapEntry top
    cdef bint pushed
    while True:
        # Push every pair whose merge pays. The first sweep fills the heap; later sweeps
        # catch gains that grew lazily without an entry, so no positive merge is left.
        pushed = False
        for a in range(M):
            if not alive[a]:
                continue
            it = adj[a].begin()
            it_end = adj[a].end()
            while it != it_end:
                b = deref(it).first
                if b > a:
                    g = _gain(costs, best, second, argbest, part, K, a, b, deref(it).second)
                    if g > GAIN_EPS:
                        heap.push(HeapEntry(g, IntPair(a, b)))
                        pushed = True
                inc(it)
        if not pushed:
            break
        while not heap.empty():
            top = heap.top()
            heap.pop()
            st.heap_pops += 1
            a = top.second.first
            b = top.second.second
            if not alive[a] or not alive[b]:
                continue
            f = adj[a].find(b)
            if f == adj[a].end():
                continue
            w = deref(f).second
            g2 = _gain(costs, best, second, argbest, part, K, a, b, w)
            if g2 <= GAIN_EPS:
                continue
            if g2 < top.first - 1e-9 * (1.0 + abs(top.first)):
                heap.push(HeapEntry(g2, IntPair(a, b)))
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
            merged_into[s] = r
            st.merges += 1
            adj[r].erase(s)
            it = adj[s].begin()
            it_end = adj[s].end()
            while it != it_end:
                c = deref(it).first
                if c != r:
                    adj[c].erase(s)
                    w = adj[c][r] + deref(it).second
                    adj[c][r] = w
                    adj[r][c] = w
                    g = _gain(costs, best, second, argbest, part, K, r, c, w)
                    if g > GAIN_EPS:
                        heap.push(HeapEntry(g, IntPair(r, c)))
                inc(it)
            adj[s] = AdjMap()
    adj.clear()
    adj.shrink_to_fit()

    # Resolve every superpixel to its final cluster.
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
    t1 = _now(); st.t_gaec = t1 - t0; t0 = t1

    # Cluster ids for the node-level phases: a GAEC cluster of a partitionable class
    # keeps its id (< M); every non-partitionable class k is the single cluster M + k.
    # Fresh singletons created by the improvement phase get ids from M + K upwards.
    cdef int64_t ncl_cap = <int64_t>M + K + N
    cdef vector[int32_t] cl, clclass, clsize
    cl.resize(N)
    clclass.assign(ncl_cap, -1)
    clsize.assign(ncl_cap, 0)
    for a in range(M):
        if merged_into[a] == a:
            k = argbest[a]
            clclass[a] = k
    for k in range(K):
        clclass[M + k] = k
    for i in range(N):
        r = merged_into[cid[i]]
        k = argbest[r]
        if part[k]:
            cl[i] = r
        else:
            cl[i] = M + k
        clsize[cl[i]] += 1
    free(costs); free(best); free(second); free(argbest)
    cid.clear(); cid.shrink_to_fit(); merged_into.clear(); merged_into.shrink_to_fit()

    cdef double obj = 0.0
    for i in range(N):
        obj += nc[i * s0 + clclass[cl[i]] * s1]
    for e in range(E):
        if cl[edges[2 * e]] != cl[edges[2 * e + 1]]:
            obj += ec[e]
    st.objective_before_improve = obj

    # ---------------- phase 3: single-node moves -----------------------------------
    cdef vector[int32_t] queue, lcl
    cdef vector[double] lw
    cdef vector[uint8_t] inq
    cdef vector[int32_t] lmark
    cdef int64_t head = 0, budget, qn
    cdef int32_t ci, ki, tgt, kt, next_id = M + K, nl
    cdef double cur, bestc, cand, wown
    cdef const double* row
    cdef int32_t kb
    cdef bint interior
    if improve and N > 0:
        queue.resize(N)
        inq.assign(N, 1)
        for i in range(N):
            queue[i] = i
        qn = N   # number of queued entries (ring buffer of capacity N)
        lmark.assign(ncl_cap, -1)
        budget = <int64_t>max_rounds * N
        while qn > 0 and st.improve_visits < budget:
            i = queue[head]
            head += 1
            if head == N:
                head = 0
            qn -= 1
            inq[i] = 0
            st.improve_visits += 1
            ci = cl[i]
            ki = clclass[ci]
            row = nc + i * s0
            # Fast exit for the common interior node: all neighbours in its cluster, its
            # best class already chosen and a non-negative pull from the cluster. Then no
            # class is cheaper and leaving would cut attractive edges.
            if node_arg[i] == ki:
                wown = 0.0
                interior = True
                for p in range(noff[i], noff[i + 1]):
                    if cl[nnbr[p]] != ci:
                        interior = False
                        break
                    wown += nwt[p]
                if interior and wown >= 0.0:
                    continue
            # weights from i to each neighbouring cluster
            lcl.clear(); lw.clear()
            for p in range(noff[i], noff[i + 1]):
                c = cl[nnbr[p]]
                if lmark[c] < 0:
                    lmark[c] = lcl.size()
                    lcl.push_back(c)
                    lw.push_back(nwt[p])
                else:
                    lw[lmark[c]] += nwt[p]
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
            # node's own best class is usually eligible, which spares the scan.
            kb = node_arg[i]
            if part[kb] and kb == ki and clsize[ci] == 1:
                pass  # already alone in its best class: nothing cheaper exists
            elif part[kb] or (lmark[M + kb] < 0 and kb != ki):
                cand = row[kb * s1]
                if cand < bestc:
                    bestc = cand; kt = kb
                    tgt = -2 if part[kb] else M + kb
            else:
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
                tgt = next_id
                next_id += 1
                clclass[tgt] = kt
            clsize[ci] -= 1
            clsize[tgt] += 1
            cl[i] = tgt
            st.improve_moves += 1
            for p in range(noff[i], noff[i + 1]):
                j = nnbr[p]
                if not inq[j]:
                    inq[j] = 1
                    queue[(head + qn) % N] = j
                    qn += 1
    t1 = _now(); st.t_improve = t1 - t0; t0 = t1

    # ---------------- phase 4: segments = connected components of uncut edges ------
    for i in range(N):
        parent[i] = i
    for e in range(E):
        u = edges[2 * e]; v = edges[2 * e + 1]
        if cl[u] == cl[v]:
            ru = _find(&parent[0], u)
            rv = _find(&parent[0], v)
            if ru != rv:
                if ru < rv:
                    parent[rv] = ru
                else:
                    parent[ru] = rv
    cdef vector[int32_t] segid
    segid.assign(N, -1)
    cdef int32_t nseg = 0
    for i in range(N):
        r = _find(&parent[0], i)
        if segid[r] < 0:
            segid[r] = nseg
            nseg += 1
        out_segments[i] = segid[r]
        out_labels[i] = clclass[cl[i]]
    for e in range(E):
        out_cut[e] = out_segments[edges[2 * e]] != out_segments[edges[2 * e + 1]]
    t1 = _now(); st.t_output = t1 - t0
    return 0


def solve(const double[:, :] node_costs, const int32_t[:, ::1] edges,
          const double[::1] edge_costs, const uint8_t[::1] partitionable,
          const uint8_t[::1] local_edges, double precluster_threshold,
          int precluster_max_size, bint improve, int max_improve_rounds,
          int32_t[::1] labels, int32_t[::1] segments, uint8_t[::1] edge_cut):
    """Solve one AMWC problem; fill ``labels``, ``segments`` and ``edge_cut`` in place.

    Preconditions (checked by :func:`copsctl.solver.solve_amwc`, not here): N >= 1,
    K >= 1, finite costs, edge endpoints in [0, N) and distinct, arrays C-contiguous
    except ``node_costs``, which may have any strides (a class-major network output
    needs no copy),
    ``partitionable`` of length K, ``local_edges`` (E,) flags of the edges eligible for
    pre-clustering, outputs of lengths N, N and E. Returns a dict of
    timings and counts. The GIL is released for the whole computation.
    """
    cdef Stats st
    st.t_precluster = st.t_rag = st.t_gaec = st.t_improve = st.t_output = 0.0
    st.superpixels = st.clusters_after_gaec = st.merges = st.heap_pops = 0
    st.improve_moves = st.improve_visits = 0
    st.objective_before_improve = 0.0
    cdef int32_t N = node_costs.shape[0]
    cdef int32_t K = node_costs.shape[1]
    cdef int64_t E = edges.shape[0]
    cdef const int32_t* ep = &edges[0, 0] if E > 0 else NULL
    cdef const double* cp = &edge_costs[0] if E > 0 else NULL
    cdef uint8_t* cutp = &edge_cut[0] if E > 0 else NULL
    cdef const uint8_t* lp = &local_edges[0] if E > 0 else NULL
    cdef int64_t s0 = node_costs.strides[0] // sizeof(double)
    cdef int64_t s1 = node_costs.strides[1] // sizeof(double)
    with nogil:
        _solve_core(&node_costs[0, 0], s0, s1, N, K, ep, E, cp, &partitionable[0], lp,
                    precluster_threshold, precluster_max_size, improve, max_improve_rounds,
                    &labels[0], &segments[0], cutp, &st)
    return {
        "seconds_precluster": st.t_precluster,
        "seconds_rag": st.t_rag,
        "seconds_gaec": st.t_gaec,
        "seconds_improve": st.t_improve,
        "seconds_output": st.t_output,
        "superpixels": st.superpixels,
        "merges": st.merges,
        "clusters_after_gaec": st.clusters_after_gaec,
        "heap_pops": st.heap_pops,
        "improve_moves": st.improve_moves,
        "improve_visits": st.improve_visits,
        "objective_before_improve": st.objective_before_improve,
    }
