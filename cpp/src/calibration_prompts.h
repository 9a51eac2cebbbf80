// The shipped set of generic, unlabeled prompts that calibrated LoGo signals are normalised over.
#pragma once

#include <string>
#include <vector>

namespace logo::core {

// Diverse everyday inputs (questions, instructions, code, letters, chat, other languages), written for
// this project and deliberately unlike any task template of the shipped pool. Fixed order; never empty.
const std::vector<std::string> & calibration_prompts();

}  // namespace logo::core
