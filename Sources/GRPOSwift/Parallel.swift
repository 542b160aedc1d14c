// Worker-thread count and a deterministic parallel-for over fixed chunks.
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Thread count used by the kernels. Initialised lazily from GRPO_SWIFT_NUM_THREADS or the
/// number of online CPUs. Work is always split into the same chunks whatever the count, and
/// reductions combine per-chunk partials in chunk order, so results never depend on it.
public enum Parallel {
    static let configured = Atomic<Int>(0)

    public static var numThreads: Int {
        let n = configured.load(ordering: .relaxed)
        if n > 0 { return n }
        let initial = defaultThreads()
        configured.store(initial, ordering: .relaxed)
        return initial
    }

    /// Sets the thread count (n >= 1).
    public static func setNumThreads(_ n: Int) throws(GRPOError) {
        guard n >= 1 else { throw GRPOError(.value, "num_threads must be >= 1, got \(n)") }
        configured.store(n, ordering: .relaxed)
    }

    static func defaultThreads() -> Int {
        if let raw = getenv("GRPO_SWIFT_NUM_THREADS") {
            let s = String(cString: raw)
            if let v = Int(s), v >= 1 { return v }
        }
        let cpus = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return cpus >= 1 ? Int(cpus) : 1
    }

    /// Runs `body(chunkIndex, range)` for `count` items split into chunks of `chunkSize`
    /// (the split does not depend on the thread count). Chunks may run concurrently.
    ///
    /// Interruption: when the calling thread has an interrupt flag registered (see Interrupt),
    /// it is checked at entry and before every chunk on every worker; once it is raised no new
    /// chunk starts, and after the running ones finish this throws GRPOError(.interrupted).
    /// Outputs are then partially written; callers propagate the error (`try`).
    ///
    /// `dynamic`: chunks go to whichever worker asks next instead of a fixed worker (results do
    /// not change: each chunk's output and partials are its own, combined in chunk order).
    public static func forEachChunk(
        count: Int, chunkSize: Int, dynamic: Bool = false, _ body: (Int, Range<Int>) -> Void
    ) throws(GRPOError) {
        guard count > 0 else { return }
        let flag = Interrupt.current()
        if let flag, Interrupt.isRaised(flag) { throw Interrupt.interrupted }
        let size = max(1, chunkSize)
        let chunks = count / size + (count % size == 0 ? 0 : 1)
        let threads = min(numThreads, chunks)
        if threads <= 1 {
            for c in 0..<chunks {
                if c > 0, let flag, Interrupt.isRaised(flag) { throw Interrupt.interrupted }
                body(c, (c * size)..<min(count, (c + 1) * size))
            }
            return
        }
        if dynamic {
            try runDynamic(chunks: chunks, size: size, count: count, helpers: threads - 1, flag: flag, body)
            return
        }
        // Static schedule: worker w takes chunks c = w, w + threads, ... (the same worker sees the
        // same rows in consecutive passes: their data stays in its cache). Chunks write disjoint
        // outputs by contract of the callers, so sharing `body` across the workers is safe
        // although the closure type is not Sendable.
        let watched = UncheckedSendable(flag)
        withoutActuallyEscaping(body) { body in
            let shared = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: threads) { w in
                var c = w
                while c < chunks {
                    if let flag = watched.value, Interrupt.isRaised(flag) { return }
                    shared.value(c, (c * size)..<min(count, (c + 1) * size))
                    c += threads
                }
            }
        }
        if let flag, Interrupt.isRaised(flag) { throw Interrupt.interrupted }
    }
}


/// The shared state of one dynamic forEachChunk: the next chunk to claim and the number finished.
/// Heap-allocated and retained by every helper block, so that a helper that starts after the call
/// returned still finds it (and then no chunk to claim).
private final class DynamicChunks: @unchecked Sendable {
    let next = Atomic<Int>(0)
    let done = Atomic<Int>(0)
    let chunks: Int, size: Int, count: Int
    let flag: UnsafeRawPointer?
    /// The caller's body, valid while a chunk can still be claimed (see runDynamic).
    let body: UnsafeRawPointer

    init(chunks: Int, size: Int, count: Int, flag: UnsafeRawPointer?, body: UnsafeRawPointer) {
        self.chunks = chunks
        self.size = size
        self.count = count
        self.flag = flag
        self.body = body
    }

    /// Claims and runs chunks until none is left; once the interrupt flag is raised, claimed
    /// chunks are skipped. Nothing but the counters is touched unless a claim succeeds, and claims
    /// succeed only while the caller waits (the flag may live in the caller's frame).
    func work() {
        while true {
            let c = next.wrappingAdd(1, ordering: .relaxed).oldValue
            if c >= chunks { return }
            if flag == nil || !Interrupt.isRaised(flag!) {
                body.assumingMemoryBound(to: ((Int, Range<Int>) -> Void).self).pointee(
                    c, (c * size)..<Swift.min(count, (c + 1) * size))
            }
            done.wrappingAdd(1, ordering: .releasing)
        }
    }
}

extension Parallel {
    /// The dynamic schedule: `helpers` Dispatch blocks and the calling thread claim chunks from
    /// one counter. The caller waits only for the chunks that were claimed, not for the helpers
    /// to start: on a shared machine waking a parked worker can take longer than the work (tens of
    /// microseconds on a VM), and a helper that arrives late finds nothing to claim and leaves.
    /// Results do not depend on which thread runs a chunk (outputs and partials are per chunk).
    fileprivate static func runDynamic(chunks: Int, size: Int, count: Int, helpers: Int, flag: UnsafeRawPointer?,
                                       _ body: (Int, Range<Int>) -> Void) throws(GRPOError) {
        try withoutActuallyEscaping(body) { (body) throws(GRPOError) in
            var local = body
            try withUnsafePointer(to: &local) { (bp) throws(GRPOError) in
                let job = DynamicChunks(chunks: chunks, size: size, count: count, flag: flag,
                                        body: UnsafeRawPointer(bp))
                for _ in 0..<helpers {
                    DispatchQueue.global().async { job.work() }
                }
                job.work()
                // Close the counter: from here on no chunk can be claimed, so `body` is not called
                // after this function returns. Then wait for the claimed chunks to finish.
                let claimed = Swift.min(job.next.exchange(chunks, ordering: .relaxed), chunks)
                var spins = 0
                while job.done.load(ordering: .acquiring) < claimed {
                    spins += 1
                    if spins > 64 { sched_yield() }
                }
                if let flag, Interrupt.isRaised(flag) { throw Interrupt.interrupted }
            }
        }
    }
}

/// Carries a value into a concurrent closure; the user guarantees data-race freedom
/// (here: each chunk writes only its own part of the outputs).
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
