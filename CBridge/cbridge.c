#include "grpo_swift.h"
