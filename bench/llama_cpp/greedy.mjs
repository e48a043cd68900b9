// Greedy decoding in real llama.cpp (node-llama-cpp's prebuilt binaries), for NimLLM's GGUF test and
// benchmark. Reads a JSON request on stdin, writes a JSON answer on stdout:
//   {"model": "m.gguf", "prompts": [[ids...]], "max_tokens": 32, "threads": 2, "texts": ["..."]}
// -> {"tokens": [[ids...]], "ttft_s": [...], "decode_s": [...], "tokenized": [[ids...]]}
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const request = JSON.parse(await new Promise((resolve) => {
    let data = "";
    process.stdin.on("data", (chunk) => data += chunk);
    process.stdin.on("end", () => resolve(data));
}));
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: request.model});
const context = await model.createContext({contextSize: model.trainContextSize, threads: request.threads ?? 0});
const answer = {tokens: [], ttft_s: [], decode_s: [],
                tokenized: (request.texts ?? []).map((text) => Array.from(model.tokenize(text)))};
for (const prompt of request.prompts) {
    const sequence = context.getSequence();
    const tokens = [];
    const start = performance.now();
    let first = start;
    // every greedy token, end-of-generation tokens included, as NimLLM's generate() gives them
    for await (const token of sequence.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
        if (tokens.length === 0) first = performance.now();
        tokens.push(token);
        if (tokens.length >= request.max_tokens) break;
    }
    answer.tokens.push(tokens);
    answer.ttft_s.push((first - start) / 1000);
    answer.decode_s.push((performance.now() - first) / 1000);
    sequence.dispose();
}
process.stdout.write(JSON.stringify(answer) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
