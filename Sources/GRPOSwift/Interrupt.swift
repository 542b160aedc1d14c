// Cooperative interruption (Ctrl-C): a flag per calling thread that the kernels poll between
// chunks of work.
//
// A caller registers the address of a 32-bit flag for its own thread (grpo_set_interrupt_flag in
// the C ABI, `Interrupt.withFlag` in Swift). Kernels called from that thread read the flag with
// relaxed atomic loads -- at the entry of every Parallel.forEachChunk, before each chunk on every
// worker, and in long serial loops (`Interrupt.check()`) -- and once it is nonzero they stop
// taking new chunks and throw GRPOError(.interrupted), which the C layer returns as
// GRPO_ERR_INTERRUPTED. The flag is whoever raised it's to set (a signal handler, another thread);
// the library never writes it. Other threads' calls never see it: the registration is
// thread-local, and Parallel.forEachChunk hands the caller's flag to its workers explicitly.
//
// Latency bound: the time of the longest single chunk plus the serial work between two checks
// (each kernel's chunks are sized for a few milliseconds of work; measured in the tests).
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public enum Interrupt {
    /// The thread-local slot of the registered flag. nil when no pthread key could be created:
    /// then registration fails with .noMemory and kernels run to completion.
    static let key: pthread_key_t? = {
        var k = pthread_key_t()
        return pthread_key_create(&k, nil) == 0 ? k : nil
    }()

    /// The flag registered for the calling thread (the address of an Int32 read atomically).
    @inline(__always)
    static func current() -> UnsafeRawPointer? {
        guard let key else { return nil }
        return UnsafeRawPointer(pthread_getspecific(key))
    }

    /// Registers `flag` (nil: none) for the calling thread.
    static func register(_ flag: UnsafeRawPointer?) throws(GRPOError) {
        guard let key else {
            throw GRPOError(.noMemory, "no thread-local slot for the interrupt flag (pthread_key_create failed)")
        }
        guard pthread_setspecific(key, flag) == 0 else {
            throw GRPOError(.noMemory, "could not register the interrupt flag (pthread_setspecific failed)")
        }
    }

    /// Whether the flag at `flag` is raised (nonzero): one relaxed atomic load.
    @inline(__always)
    static func isRaised(_ flag: UnsafeRawPointer) -> Bool {
        flag.assumingMemoryBound(to: Atomic<Int32>.self).pointee.load(ordering: .relaxed) != 0
    }

    /// The error every interrupted kernel throws.
    static var interrupted: GRPOError {
        GRPOError(.interrupted, "interrupted: the calling thread's interrupt flag was raised")
    }

    /// Throws GRPOError(.interrupted) when the calling thread's flag is raised. For long serial
    /// loops of the kernels (Parallel.forEachChunk checks by itself).
    @inline(__always)
    public static func check() throws(GRPOError) {
        if let flag = current(), isRaised(flag) { throw interrupted }
    }

    /// Runs `body` with `flag` registered for the calling thread (restoring the previous
    /// registration afterwards): kernels that `body` calls on this thread stop with
    /// GRPOError(.interrupted) once the flag is raised. Nests.
    public static func withFlag<R, E: Error>(_ flag: InterruptFlag, _ body: () throws(E) -> R) throws(E) -> R {
        let previous = current()
        let registered = (try? register(UnsafeRawPointer(flag.storage))) != nil
        defer {
            if registered { try? register(previous) }
            withExtendedLifetime(flag) {}
        }
        return try body()
    }
}

/// An interrupt flag owned by Swift code. Raise it from any thread (or from a signal handler
/// through `pointer`, with a C atomic store) to stop the kernels of a `Interrupt.withFlag` scope.
public final class InterruptFlag: @unchecked Sendable {
    let storage: UnsafeMutablePointer<Atomic<Int32>>

    public init() {
        storage = .allocate(capacity: 1)
        storage.initialize(to: Atomic<Int32>(0))
    }

    deinit {
        storage.deinitialize(count: 1)
        storage.deallocate()
    }

    /// Sets the flag: kernels watching it stop at their next check.
    public func raise() { storage.pointee.store(1, ordering: .relaxed) }

    /// Clears the flag (for the next call).
    public func reset() { storage.pointee.store(0, ordering: .relaxed) }

    public var isRaised: Bool { storage.pointee.load(ordering: .relaxed) != 0 }

    /// The flag's address as the C ABI takes it (grpo_set_interrupt_flag); valid while `self` lives.
    public var pointer: UnsafePointer<Int32> {
        UnsafeRawPointer(storage).assumingMemoryBound(to: Int32.self)
    }
}
