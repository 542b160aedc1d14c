// Compile-time facts about this build.
import CBLAS

/// True when compiled with AVX2 + FMA target features (the default build).
#if arch(x86_64)
let builtWithAVX2: Bool = {
    // `-Xcc -mavx2` defines __AVX2__ for the Clang importer; the Swift side cannot see it
    // directly, so Package.swift passes the same switch as a compilation condition.
    #if GRPO_AVX2
    return true
    #else
    return false
    #endif
}()
#endif

/// The OpenBLAS configuration string (proves the BLAS link; used in benchmark reports).
public func blasConfig() -> String {
    guard let c = openblas_get_config() else { return "unknown" }
    return String(cString: c)
}
