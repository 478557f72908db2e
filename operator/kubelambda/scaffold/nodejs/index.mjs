// Lambda's Node.js handler: an async function of the event (parsed JSON) and the context.
export const handler = async (event, context) => {
  const name = (event && event.name) || "world";
  console.log(`Greeting ${name}`);
  return { message: `${process.env.GREETING || "Hello"}, ${name}!`, requestId: context.awsRequestId };
};
