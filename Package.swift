// swift-tools-version: 6.2
// grpo_swift: GRPO kernels in Swift behind a C ABI (see CBridge/include/grpo_swift.h).
import PackageDescription

// The kernels are written for SIMD8<Float> with FMA. Without these target features
// Swift lowers SIMD maths to per-lane libm calls (measured ~12x slower on the
// log-softmax loop), so they are on by default. GRPO_SWIFT_PORTABLE=1 at build time
// turns them off for a CPU without AVX2/FMA (correct, slower); the Python module
// refuses to import an AVX2 build on a CPU that lacks AVX2 (see _native.c).
let portable = Context.environment["GRPO_SWIFT_PORTABLE"] == "1"
let simdFlags: [String] = portable ? [] : ["-Xcc", "-mavx2", "-Xcc", "-mfma", "-Xcc", "-mf16c"]

let package = Package(
    name: "GRPOSwift",
    products: [
        // For Swift users: link the core directly.
        .library(name: "GRPOSwift", targets: ["GRPOSwift"]),
        // The one shared library the Python wheel and C users load (built with -static-stdlib).
        .library(name: "grpo_swift", type: .dynamic, targets: ["GRPOSwift"]),
    ],
    targets: [
        // The C ABI contract. cbridge.c exists only so SwiftPM builds this as a C module.
        .target(name: "CGRPOBridge", path: "CBridge", publicHeadersPath: "include"),
        // OpenBLAS's cblas.h from Debian's libopenblas-dev.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS"),
        .target(
            name: "GRPOSwift",
            dependencies: ["CGRPOBridge", "CBLAS"],
            // -cross-module-optimization: the public generic entry points (Advantages.compute,
            // PolicyLoss.compute, LogProbs.forward, ...) are specialised in Swift clients instead of
            // running unspecialised through witness tables (measured with grpo-bench: the Array API
            // of group advantages at N=1M went from 4.6x to 1.1x the C-ABI time).
            swiftSettings: [.unsafeFlags(simdFlags + ["-cross-module-optimization"])]
                + (portable ? [] : [.define("GRPO_AVX2")])
        ),
        // examples/swift: the Swift API from a small program (swift run grpo-swift-example).
        .executableTarget(name: "grpo-swift-example", dependencies: ["GRPOSwift"], path: "examples/swift"),
        // Swift-native benchmark (no Python): `swift run -c release grpo-bench`.
        .executableTarget(
            name: "grpo-bench",
            dependencies: ["GRPOSwift", "CGRPOBridge"],
            path: "Benchmarks/GRPOBench"
        ),
        .testTarget(
            name: "GRPOSwiftTests",
            dependencies: ["GRPOSwift", "CGRPOBridge"]
        ),
    ]
)
