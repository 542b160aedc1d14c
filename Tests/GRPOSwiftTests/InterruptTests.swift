// The interrupt flag: kernels stop between chunks once the calling thread's flag is raised,
// return GRPO_ERR_INTERRUPTED through the C ABI, leave other threads' calls alone, and run
// normally again once the flag is cleared.
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import GRPOSwift
import CGRPOBridge

private func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

/// A plain OS thread (not a Dispatch or Swift-concurrency pool thread, which may be the test's
/// own thread or saturated by concurrently running tests). `join()` waits for it.
private final class OSThread: @unchecked Sendable {
    private var tid = pthread_t()
    private let body: () -> Void
    init(_ body: @escaping () -> Void) {
        self.body = body
        let ctx = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&tid, nil, { ctx in
            let me = Unmanaged<OSThread>.fromOpaque(ctx!).takeRetainedValue()
            me.body()
            return nil
        }, ctx)
        precondition(rc == 0, "pthread_create failed")
    }
    func join() { pthread_join(tid, nil) }
}

private final class Counter: Sendable {
    let value = Atomic<Int>(0)
    func add() { value.add(1, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// Raises `flag` from another OS thread after `ms` milliseconds.
private func raiseLater(_ flag: InterruptFlag, ms: UInt32) -> OSThread {
    OSThread { usleep(ms * 1000); flag.raise() }
}

@Suite struct InterruptTests {
    @Test(arguments: [false, true]) func raisedFlagStopsBeforeAnyChunk(dynamic: Bool) throws {
        let flag = InterruptFlag()
        flag.raise()
        let ran = Atomic<Int>(0)
        var caught: GRPOError?
        Interrupt.withFlag(flag) {
            do throws(GRPOError) {
                try Parallel.forEachChunk(count: 1000, chunkSize: 10, dynamic: dynamic) { _, _ in ran.add(1, ordering: .relaxed) }
            } catch { caught = error }
            #expect(throws: GRPOError.self) { try Interrupt.check() }
        }
        #expect(caught?.kind == .interrupted)
        #expect(caught?.status == GRPO_ERR_INTERRUPTED)
        #expect(ran.load(ordering: .relaxed) == 0)
        // Outside the scope (and with no flag) nothing stops.
        try Interrupt.check()
        try Parallel.forEachChunk(count: 1000, chunkSize: 10, dynamic: dynamic) { _, _ in ran.add(1, ordering: .relaxed) }
        #expect(ran.load(ordering: .relaxed) == 100)
    }

    @Test(arguments: [false, true]) func raisingMidCallStopsWithinOneChunk(dynamic: Bool) throws {
        // 4000 chunks of ~1 ms each (4 s uninterrupted, / the thread count); the flag is raised
        // from another thread after 50 ms: the call must stop after at most one more chunk per
        // worker, far below the uninterrupted time.
        let flag = InterruptFlag()
        let ran = Atomic<Int>(0)
        let chunks = 4000
        let raiser = raiseLater(flag, ms: 50)
        defer { raiser.join() }
        let clock = ContinuousClock()
        let start = clock.now
        var caught: GRPOError?
        Interrupt.withFlag(flag) {
            do throws(GRPOError) {
                try Parallel.forEachChunk(count: chunks, chunkSize: 1, dynamic: dynamic) { _, _ in
                    usleep(1000)
                    ran.add(1, ordering: .relaxed)
                }
            } catch { caught = error }
        }
        let elapsed = seconds(clock.now - start)
        #expect(caught?.kind == .interrupted)
        #expect(ran.load(ordering: .relaxed) < chunks / 2)
        #expect(elapsed < 1.0, "stopped after \(elapsed) s")
    }

    @Test(arguments: [false, true]) func everyChunkRunsExactlyOnce(dynamic: Bool) throws {
        // Many concurrent callers: helpers of one call often start after it returned (the
        // dynamic schedule does not wait for them) and must find nothing to run.
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for count in [1, 2, 7, 64, 1001] {
                var hits = [Int](repeating: 0, count: count)
                hits.withUnsafeMutableBufferPointer { h in
                    let hp = UncheckedSendable(h)
                    try? Parallel.forEachChunk(count: count, chunkSize: 3, dynamic: dynamic) { c, r in
                        #expect(r == (c * 3)..<min(count, c * 3 + 3))
                        for i in r { hp.value[i] += 1 }
                    }
                }
                #expect(hits.allSatisfy { $0 == 1 })
            }
        }
    }

    @Test func kernelThroughTheABIReturnsInterruptedAndRecovers() {
        var rng = SplitMix(seed: 7)
        let n = 64, v = 512
        let x = randomLogits(n * v, rng: &rng).map { Float($0) }
        let t = (0..<n).map { Int64($0 * 7 % v) }
        var ref = [Float](repeating: 0, count: n), lp = ref
        var err = [CChar](repeating: 0, count: 256)
        #expect(grpo_selective_log_softmax(x, Int32(GRPO_F32.rawValue), n, v, t, nil, 1, &ref, nil, nil, &err, 256) == GRPO_OK)

        let flag = InterruptFlag()
        #expect(grpo_get_interrupt_flag() == nil)
        #expect(grpo_set_interrupt_flag(flag.pointer) == GRPO_OK)
        #expect(grpo_get_interrupt_flag() == flag.pointer)
        // Registered but not raised: a normal call, same bits.
        #expect(grpo_selective_log_softmax(x, Int32(GRPO_F32.rawValue), n, v, t, nil, 1, &lp, nil, nil, &err, 256) == GRPO_OK)
        #expect(lp == ref)
        flag.raise()
        lp = [Float](repeating: 0, count: n)
        #expect(grpo_selective_log_softmax(x, Int32(GRPO_F32.rawValue), n, v, t, nil, 1, &lp, nil, nil, &err, 256)
                == GRPO_ERR_INTERRUPTED)
        #expect(errorText(err).contains("interrupted"))
        #expect(String(cString: grpo_status_name(GRPO_ERR_INTERRUPTED)) == "interrupted")
        // Advantages and the policy loss check too.
        let rewards = (0..<64).map { Double($0 % 5) }
        var adv = [Double](repeating: 0, count: 64), mean = adv, std = adv
        var zero = [UInt8](repeating: 0, count: 64)
        var cfg = grpo_advantages_config(num_generations: 4, scale_rewards: 0, aggregation: 0)
        #expect(grpo_group_advantages_f64(rewards, 64, 1, nil, &cfg, &adv, &mean, &std, &zero, &err, 256)
                == GRPO_ERR_INTERRUPTED)
        // Cleared: the same call works again and gives the same bits.
        flag.reset()
        #expect(grpo_selective_log_softmax(x, Int32(GRPO_F32.rawValue), n, v, t, nil, 1, &lp, nil, nil, &err, 256) == GRPO_OK)
        #expect(lp == ref)
        #expect(grpo_set_interrupt_flag(nil) == GRPO_OK)
        #expect(grpo_get_interrupt_flag() == nil)
    }

    @Test func otherThreadsAreNotInterrupted() throws {
        // This thread's flag is raised for the whole test; calls from other threads (no flag)
        // run to completion with the same bits, although they share the worker pool.
        var rng = SplitMix(seed: 9)
        let n = 256, v = 1000
        let x = randomLogits(n * v, rng: &rng).map { Float($0) }
        let t = (0..<n).map { Int64($0 * 13 % v) }
        let reference = try LogProbs.compute(logits: x, vocab: v, targets: t)
        let flag = InterruptFlag()
        flag.raise()
        let mismatches = Counter()
        var interrupted = 0
        try Interrupt.withFlag(flag) { () throws(GRPOError) in
            let others = (0..<4).map { _ in
                OSThread {
                    for _ in 0..<5 {
                        let r = try? LogProbs.compute(logits: x, vocab: v, targets: t)
                        if r?.logProbs != reference.logProbs { mismatches.add() }
                    }
                }
            }
            for th in others { th.join() }
            do throws(GRPOError) {
                _ = try LogProbs.compute(logits: x, vocab: v, targets: t)
            } catch {
                if error.kind == .interrupted { interrupted += 1 }
            }
        }
        #expect(mismatches.count == 0)
        #expect(interrupted == 1)
    }

    @Test func fusedHeadStopsMidCall() throws {
        // A fused LM-head forward of 16 (64 x 1024) tiles; the flag is raised after a fifth of the
        // time an uninterrupted run takes. The call must report .interrupted well before it could
        // have finished, and the same call afterwards (flag cleared) must equal an uninterrupted run.
        var rng = SplitMix(seed: 3)
        let n = 256, h = 32, v = 1024 * 4
        let hidden = (0..<(n * h)).map { _ in Float(rng.uniform(-1, 1)) }
        let weight = (0..<(v * h)).map { _ in Float(rng.uniform(-0.2, 0.2)) }
        let targets = (0..<n).map { Int64($0 * 31 % v) }
        func run() throws(GRPOError) -> [Float] {
            var lp = [Float](repeating: 0, count: n)
            try hidden.withUnsafeBufferPointer { (hb) throws(GRPOError) in
                try weight.withUnsafeBufferPointer { (wb) throws(GRPOError) in
                    try targets.withUnsafeBufferPointer { (tb) throws(GRPOError) in
                        try lp.withUnsafeMutableBufferPointer { (lb) throws(GRPOError) in
                            try FusedLMHead.forward(hidden: hb, weight: wb, bias: nil, rows: n, hiddenSize: h,
                                                    vocab: v, targets: tb,
                                                    config: LMHeadConfig(tileRows: 64, tileCols: 1024),
                                                    logProbs: lb, entropy: nil, logSumExp: nil)
                        }
                    }
                }
            }
            return lp
        }
        let clock = ContinuousClock()
        var start = clock.now
        let reference = try run()
        let full = seconds(clock.now - start)

        let flag = InterruptFlag()
        let raiser = raiseLater(flag, ms: UInt32(Swift.max(1.0, full * 1000 / 5)))
        start = clock.now
        var caught: GRPOError?
        Interrupt.withFlag(flag) {
            do throws(GRPOError) { _ = try run() } catch { caught = error }
        }
        let stopped = seconds(clock.now - start)
        raiser.join()
        #expect(caught?.kind == .interrupted, "uninterrupted run took \(full) s")
        #expect(stopped < Swift.max(0.5, 0.75 * full), "stopped after \(stopped) s; a full run takes \(full) s")
        flag.reset()
        let again = try Interrupt.withFlag(flag) { () throws(GRPOError) in try run() }
        #expect(again == reference)
    }
}
